r"""Convert weights between the PyTorch reference and this package.

    # reference checkpoint (.pt/.pth read without PyTorch, or .safetensors) -> our parameter file
    python -m cosmos_policy_jax.convert import --model dit --config=configs/cosmos_policy.py:libero \
        --input model-480p-16fps.pt --output params/          # -> params/dit_params.safetensors

    # our parameter file -> reference state dict (`net.`-prefixed for the DiT)
    python -m cosmos_policy_jax.convert export --model dit --config=configs/cosmos_policy.py:libero \
        --input params/dit_params.safetensors --output export/   # -> export/model.safetensors (+ model.pt with torch)

``import`` writes a safetensors file whose keys are the ``/``-joined NNX parameter paths
(``blocks/mlp/layer1/kernel``, stacked blocks along a leading axis) with metadata ``format``,
``model``, ``source`` and the network config; ``convert.dit.load_nnx_params`` (and the trainer's
``checkpoint.load_path`` / the evaluator) read it. ``--ema`` imports the ``net_ema.`` weights.
``export`` writes ``.safetensors`` (always possible) or ``.pt``/``.pth`` (needs PyTorch); given a
directory it writes ``model.safetensors`` and, if PyTorch is installed, ``model.pt``. Sizes come
from the config (``--config.model.net.num_blocks=...`` style overrides work). ``--model vae``
converts the Wan2.1 tokenizer (``tokenizer.pth``, no prefix) through ``convert/vae.py``.
Exit status 2 with a one-line ``error:`` message on bad input.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import os
from collections.abc import Callable
from typing import Any

from absl import app, flags
from ml_collections import config_flags

from cosmos_policy_jax import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file and arg, e.g. configs/cosmos_policy.py:libero", lock_config=True
)
_MODEL = flags.DEFINE_enum("model", "dit", ["dit", "vae"], "Which network to convert.")
_INPUT = flags.DEFINE_string("input", None, "Input weights file.")
_OUTPUT = flags.DEFINE_string("output", None, "Output file or directory.")
_EMA = flags.DEFINE_bool("ema", False, "import: read the net_ema. weights instead of net.")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "export: cast tensors (default: as stored).")

PARAMS_FILE = {"dit": "dit_params.safetensors", "vae": "vae_params.safetensors"}


@dataclasses.dataclass(frozen=True)
class _ModelApi:
    make_cfg: Callable[[Any], Any]
    import_fn: Callable[..., Any]
    export_fn: Callable[..., Any]


def _model_api(name: str, config) -> tuple[_ModelApi, Any]:
    """(converter functions, network config) for ``name``; the VAE converter is imported lazily."""
    if name == "dit":
        from cosmos_policy_jax.convert import dit
        from cosmos_policy_jax.models.dit import DiTConfig

        api = _ModelApi(DiTConfig.from_config, dit.import_dit, dit.export_dit)
        return api, api.make_cfg(config.model.net)
    try:
        vae_convert = importlib.import_module("cosmos_policy_jax.convert.vae")
        vae_models = importlib.import_module("cosmos_policy_jax.models.vae")
    except ImportError as e:
        raise RuntimeError(f"--model vae needs cosmos_policy_jax/convert/vae.py and models/vae.py ({e})") from e
    api = _ModelApi(vae_models.WanVAEConfig.from_config, vae_convert.import_vae, vae_convert.export_vae)
    return api, api.make_cfg(config.model.tokenizer)


def _output_path(output: str, default_name: str) -> str:
    if output.endswith(os.sep) or os.path.isdir(output):
        os.makedirs(output, exist_ok=True)
        return os.path.join(output, default_name)
    parent = os.path.dirname(os.path.abspath(output))
    os.makedirs(parent, exist_ok=True)
    return output


def _check_output(output: str, suffixes: str | tuple[str, ...]) -> None:
    """Refuse an output path that cannot be written before any work is done (one line, naming it)."""
    if output.endswith(os.sep) or os.path.isdir(output):
        target_dir = output
    else:
        if not output.endswith(suffixes):
            raise ValueError(f"--output must be a directory or a {'/'.join(_as_tuple(suffixes))} file: {output}")
        target_dir = os.path.dirname(os.path.abspath(output))
    probe = os.path.abspath(target_dir)
    while not os.path.exists(probe):  # the nearest existing ancestor decides
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ValueError(f"--output {output}: {probe} is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"--output {output}: directory {probe} is not writable")


def _as_tuple(x: str | tuple[str, ...]) -> tuple[str, ...]:
    return (x,) if isinstance(x, str) else x


def run_import(model: str, config, input_path: str, output: str, use_ema: bool = False) -> str:
    """Reference weights -> our parameter file; returns the path written."""
    from cosmos_policy_jax.convert.core import load_state_dict

    if use_ema and model != "dit":
        raise ValueError("--ema applies to --model dit only")
    _check_output(output, ".safetensors")
    # Read (and bounds-check) the untrusted file before the model stack (jax) is even imported.
    state_dict = load_state_dict(input_path)
    from cosmos_policy_jax.convert.dit import save_nnx_params

    api, cfg = _model_api(model, config)
    kwargs = {"use_ema": True} if use_ema else {}
    params, report = api.import_fn(state_dict, cfg, source=input_path, **kwargs)
    path = _output_path(output, PARAMS_FILE[model])
    meta = {"model": model, "source": os.path.abspath(input_path), "config": json.dumps(dataclasses.asdict(cfg))}
    save_nnx_params(params, path, metadata=meta)
    print(f"imported {input_path}: {report.summary()}", flush=True)
    print(f"wrote {path}", flush=True)
    return path


def run_export(model: str, config, input_path: str, output: str, dtype: str | None = None) -> list[str]:
    """Our parameter file -> reference state dict(s); returns the paths written."""
    from cosmos_policy_jax.convert.dit import load_nnx_params

    _check_output(output, (".safetensors", ".pt", ".pth"))
    api, cfg = _model_api(model, config)
    params, meta = load_nnx_params(input_path)
    if meta.get("model", model) != model:
        raise ValueError(f"{input_path} holds {meta['model']} parameters, not {model}")
    kwargs = {"dtype": dtype} if dtype else {}
    if output.endswith(os.sep) or os.path.isdir(output):
        os.makedirs(output, exist_ok=True)
        paths = [os.path.join(output, "model.safetensors")]
        if importlib.util.find_spec("torch") is not None:
            paths.append(os.path.join(output, "model.pt"))
    else:
        paths = [_output_path(output, "model.safetensors")]
    for path in paths:
        api.export_fn(params, cfg, path, **kwargs)
        print(f"wrote {path}", flush=True)
    return paths


def main(argv: list[str]) -> None:
    from cosmos_policy_jax.common.torch_pickle import CheckpointFormatError, UnsafeCheckpointError
    from cosmos_policy_jax.convert.core import WeightImportError

    if len(argv) != 2 or argv[1] not in ("import", "export"):
        cli.fail(f"expected one command, import or export, got {argv[1:]}")
    if _CONFIG.value is None:
        cli.fail("--config is required, e.g. --config=configs/cosmos_policy.py:libero")
    if not _INPUT.value or not _OUTPUT.value:
        cli.fail("--input and --output are required")
    try:
        if argv[1] == "import":
            run_import(_MODEL.value, _CONFIG.value, _INPUT.value, _OUTPUT.value, use_ema=_EMA.value)
        else:
            run_export(_MODEL.value, _CONFIG.value, _INPUT.value, _OUTPUT.value, dtype=_DTYPE.value)
    except (
        WeightImportError,
        CheckpointFormatError,
        UnsafeCheckpointError,
        FileNotFoundError,
        ValueError,
        RuntimeError,
        TypeError,
        OSError,  # an output that cannot be written (disk full, permissions): one line, exit 2
    ) as e:
        cli.fail(_one_line(e))


def _one_line(e: Exception, max_items: int = 8) -> str:
    """The error on one line; long key lists (WeightImportError) are cut to ``max_items`` entries each."""
    parts = []
    for line in str(e).splitlines():
        line = line.strip()
        head, sep, items = line.partition(": ")
        delim = "; " if "; " in items else ", "
        entries = items.split(delim) if sep else []
        if len(entries) > max_items:
            line = f"{head}: {delim.join(entries[:max_items])}{delim}... and {len(entries) - max_items} more"
        if line:
            parts.append(line)
    return f"{type(e).__name__}: " + " | ".join(parts)


if __name__ == "__main__":
    app.run(main)
