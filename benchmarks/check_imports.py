"""Import every package the project needs and print one line each with its version; exit 1 if any fails.

    python benchmarks/check_imports.py            # also prints JAX's backend and devices
    python benchmarks/check_imports.py --no-devices

Run first on a new machine (``gpu_check.sh`` does) so a missing or too-old package shows in the first
seconds rather than minutes into a benchmark. Optional packages are reported but never fail the check.
"""

from __future__ import annotations

import importlib
import sys
import time
from importlib import metadata

# (import name, distribution name) of what the trainer imports at run time.
REQUIRED = [
    ("jax", "jax"),
    ("jaxlib", "jaxlib"),
    ("flax", "flax"),
    ("optax", "optax"),
    ("orbax.checkpoint", "orbax-checkpoint"),
    ("grain", "grain"),
    ("ml_collections", "ml-collections"),
    ("absl", "absl-py"),
    ("numpy", "numpy"),
    ("ml_dtypes", "ml-dtypes"),
    ("h5py", "h5py"),
    ("PIL", "pillow"),
    ("safetensors", "safetensors"),
    ("yaml", "pyyaml"),
    ("etils", "etils"),
    ("tensorstore", "tensorstore"),
]
OPTIONAL = [
    ("jax_plugins.xla_cuda13", "jax-cuda13-plugin"),
    ("jax_plugins.xla_cuda12", "jax-cuda12-plugin"),
    ("tensorboardX", "tensorboardX"),
    ("tensorboard", "tensorboard"),
    ("array_record", "array-record"),
    # The policy server and its benchmark (the `serve` extra and the real openpi client).
    ("websockets", "websockets"),
    ("msgpack", "msgpack"),
    ("json_numpy", "json-numpy"),
    ("tree", "dm-tree"),
    ("openpi_client", "openpi-client"),
]


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


def check(packages: list[tuple[str, str]], required: bool) -> int:
    """Import each package; print ``name version (where)`` or the error. Returns the failure count."""
    failures = 0
    for module, dist in packages:
        try:
            mod = importlib.import_module(module)
        except Exception as e:  # any import-time failure counts, not only ImportError
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            tag = "MISSING" if required else "absent (optional)"
            print(f"{dist:20s} {tag}: {type(e).__name__}: {first}")
            failures += int(required)
            continue
        where = getattr(mod, "__file__", None) or "?"
        print(f"{dist:20s} {_version(dist):12s} {where}")
    return failures


def main(argv: list[str]) -> int:
    t0 = time.perf_counter()
    print(f"python {sys.version.split()[0]} {sys.executable}")
    failures = check(REQUIRED, required=True) + check(OPTIONAL, required=False)
    if "--no-devices" not in argv and not failures:
        import jax

        print(f"jax backend {jax.default_backend()}: {jax.devices()}")
    print(f"imports checked in {time.perf_counter() - t0:.1f} s: {failures} missing")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
