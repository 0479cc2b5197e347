"""The package's layering, checked on the source: an AST scan of every import in ``cosmos_policy_jax/``.

Each rule in ``RULES`` names the modules it applies to, what they may not import (``forbid``, with
``unless`` exceptions) or all they may import (``only``), and whether module-level imports, imports
inside functions, or both count. A module-level import runs when the module is imported; an import
inside a function only when that function runs, which is how a lower layer reaches an optional or
higher-level piece without depending on it at import time. docs/DEVELOPING.md ("Package map",
"Import rules") states the same rules in prose.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PKG = "cosmos_policy_jax"
STDLIB = "stdlib"  # in ``only``: any standard-library module


def m(*names: str) -> tuple[str, ...]:
    """Dotted names inside the package: ``m("data", "eval.main")``."""
    return tuple(f"{PKG}.{n}" for n in names)


# --------------------------------------------------------------------------------------------------
# The scanner


@dataclasses.dataclass(frozen=True)
class Import:
    importer: str  # dotted module name, e.g. cosmos_policy_jax.data.registry
    target: str  # what is imported; ``from a import b`` gives "a.b"
    line: int
    in_function: bool

    def __str__(self) -> str:
        where = "inside a function" if self.in_function else "at module level"
        return f"{self.importer}:{self.line} imports {self.target} ({where})"


def module_name(path: Path, root: Path = REPO) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def scan_source(source: str, importer: str, *, is_package: bool = False) -> list[Import]:
    """Every import statement of one module, resolved to absolute dotted names."""
    package = importer if is_package else importer.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend(Import(importer, a.name, child.lineno, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative: up level - 1 packages from the importer's package
                    up = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join(up + ([child.module] if child.module else []))
                found.extend(Import(importer, f"{base}.{a.name}", child.lineno, in_function) for a in child.names)
            visit(child, in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda))

    visit(ast.parse(source), False)
    return found


def scan_package(root: Path = REPO) -> list[Import]:
    """The package's imports, and those of ``configs/`` (loaded by every command line)."""
    out: list[Import] = []
    for path in sorted((root / PKG).rglob("*.py")) + sorted((root / "configs").rglob("*.py")):
        out += scan_source(path.read_text(), module_name(path, root), is_package=path.name == "__init__.py")
    return out


# --------------------------------------------------------------------------------------------------
# The rules


@dataclasses.dataclass(frozen=True)
class Rule:
    name: str
    reason: str
    importers: tuple[str, ...]  # module prefixes the rule applies to
    exempt: tuple[str, ...] = ()  # importer prefixes it does not apply to
    forbid: tuple[str, ...] = ()  # target prefixes they may not import ...
    unless: tuple[str, ...] = ()  # ... except these
    only: tuple[str, ...] | None = None  # when set: every target must be under one of these
    scope: str = "any"  # which imports count: "any", "module" (module level) or "function"
    xfail: str = ""  # a rule the code does not meet yet: the reason (the test is a strict xfail)


def under(name: str, prefixes: Iterable[str]) -> bool:
    """``name`` is one of ``prefixes`` or inside one (``jax`` covers ``jax.numpy``, not ``jaxlib``)."""
    top = name.split(".")[0]
    return any(
        (p == STDLIB and top in sys.stdlib_module_names) or name == p or name.startswith(p + ".") for p in prefixes
    )


def violations(rule: Rule, imports: Iterable[Import]) -> list[Import]:
    bad = []
    for imp in imports:
        if not under(imp.importer, rule.importers) or under(imp.importer, rule.exempt):
            continue
        if (rule.scope == "module" and imp.in_function) or (rule.scope == "function" and not imp.in_function):
            continue
        forbidden = under(imp.target, rule.forbid) and not under(imp.target, rule.unless)
        outside = rule.only is not None and not under(imp.target, rule.only)
        if forbidden or outside:
            bad.append(imp)
    return bad


RULES: tuple[Rule, ...] = (
    Rule(
        "common-is-the-bottom",
        "every layer shares one copy of these helpers, so they import nothing of the package (no cycles) "
        "and nothing heavy (the CPU tools and data workers use them)",
        importers=m("common"),
        only=(STDLIB, "numpy", "ml_dtypes", *m("common")),
    ),
    Rule(
        "leaf-modules-import-only-the-stdlib",
        "layouts.py is the slot table read by data, policy and eval; xla_env.py sets XLA flags before jax "
        "starts, which importing jax there would defeat",
        importers=m("layouts", "xla_env"),
        only=(STDLIB,),
    ),
    Rule(
        "error-modules-import-only-the-stdlib",
        "the bad-input error classes are imported by cli.py when it handles an error and by simulator "
        "worker processes; importing one must cost nothing",
        importers=m("common.errors", "data.errors", "eval.errors"),
        only=(STDLIB,),
    ),
    Rule(
        "cli-imports-only-the-stdlib-at-import",
        "parsing flags and reporting a bad command line must not wait for jax; cli.py imports the error "
        "classes and xla_env inside the functions that need them",
        importers=m("cli"),
        only=(STDLIB,),
        scope="module",
    ),
    Rule(
        "configs-are-plain-config-dicts",
        "configs/ files are loaded by every command line (even --help): ml_collections and the slot table only",
        importers=("configs",),
        only=(STDLIB, "ml_collections", *m("layouts")),
    ),
    Rule(
        "diffusion-is-pure-math",
        "noise levels, preconditioning and samplers are functions of arrays shared by training, inference and planning",
        importers=m("diffusion"),
        only=(STDLIB, "jax", "numpy", *m("diffusion")),
    ),
    Rule(
        "parallel-knows-no-model-or-data",
        "the mesh and the logical-axis rules are used by models, data and training, so they depend on none of them",
        importers=m("parallel"),
        only=(STDLIB, "jax", "numpy", "absl", *m("parallel", "common")),
    ),
    Rule(
        "models-are-networks-from-typed-configs",
        "the networks take DiTConfig/WanVAEConfig; config, training, data and policy code build them, "
        "never the reverse (name tables such as REMAT_POLICIES live in the model, config validation imports them)",
        importers=m("models"),
        only=(STDLIB, "jax", "flax", "numpy", *m("models", "parallel", "common", "xla_env")),
    ),
    Rule(
        "data-imports-jax-only-in-global_batch",
        "data loading runs in grain worker processes that must not start a jax backend; only the "
        "host-to-device step touches jax",
        importers=m("data"),
        exempt=m("data.global_batch"),
        forbid=("jax", "jaxlib", "flax", "optax", "orbax"),
    ),
    Rule(
        "data-is-below-models-and-training",
        "datasets are read by training, eval and the tools from plain config sections; they never see "
        "the model, the trainer, the converters or the evaluation",
        importers=m("data"),
        forbid=m(
            "convert",
            "eval",
            "training",
            "train",
            "policy",
            "planning",
            "models",
            "diffusion",
            "serve",
            "config_lib",
            "config_drift",
        ),
    ),
    Rule(
        "data-imports-demo-only-inside-functions",
        "demo/ builds on data/ (its dataset is in the LIBERO format); the registry's demo factory and the "
        "synthetic text stand-in import it when called, so importing data/ never imports demo/",
        importers=m("data"),
        forbid=m("demo"),
        scope="module",
    ),
    Rule(
        "convert-is-below-training-and-eval",
        "converters map state dicts onto the models' parameter trees; the loaders in training and eval call them",
        importers=m("convert"),
        forbid=m("training", "train", "eval", "data", "policy", "planning", "serve", "demo"),
    ),
    Rule(
        "policy-core-is-jittable-functions",
        "conditioning, denoiser, objective and inference are functions of arrays and typed configs shared by "
        "training, eval and planning; only policy/api.py (the deployable object) loads anything",
        importers=m("policy"),
        exempt=m("policy.api"),
        forbid=m(
            "training",
            "train",
            "eval",
            "serve",
            "planning",
            "data",
            "convert",
            "demo",
            "config_lib",
            "config_drift",
            "cli",
        ),
    ),
    Rule(
        "policy-api-builds-the-model-as-training-does",
        "load_policy builds and loads the model through training's set-up path (setup/weights), never "
        "through the loop, optimizer, checkpoint writer or callbacks; it serves eval, serve and planning",
        importers=m("policy.api"),
        forbid=m("training", "train", "serve", "planning"),
        unless=m("training.setup", "training.weights"),
    ),
    Rule(
        "policy-api-uses-eval-interfaces-only",
        "the policy object shares eval's input/output types, preprocessing, errors and checkpoint loading, "
        "never the rollout driver, the simulators or the eval entry point",
        importers=m("policy.api"),
        forbid=m("eval"),
        unless=m("eval.errors", "eval.policies", "eval.preprocess", "eval.loading"),
    ),
    Rule(
        "eval-and-serve-reach-training-only-through-setup",
        "inference loads a checkpoint with the code training uses (one model build, one EMA rule), "
        "not by reaching into checkpoint or asset internals",
        importers=m("eval", "serve"),
        forbid=m("training", "train"),
        unless=m("training.setup", "training.weights"),
    ),
    Rule(
        "only-the-trainer-and-the-deployment-path-import-training",
        "training/ is the top of the training stack; below it nothing depends on the trainer (cli maps "
        "training's error classes to exit codes when an error is handled)",
        importers=(PKG,),
        exempt=m("training", "train", "cli", "eval", "serve", "policy.api"),
        forbid=m("training"),
    ),
    Rule(
        "training-runs-without-eval-serve-planning-demo",
        "training must run without the evaluation/serving stack and the demo world (and their optional extras)",
        importers=m("training", "train"),
        forbid=m("eval", "serve", "planning", "demo"),
    ),
    Rule(
        "planning-composes-policy-and-eval-interfaces",
        "planning runs policy inference behind eval's policy interface and loads models through policy.api",
        importers=m("planning"),
        forbid=m("training", "train", "data", "convert", "serve", "demo", "eval"),
        unless=m("eval.errors", "eval.policies", "eval.preprocess"),
    ),
    Rule(
        "serve-sees-a-policy-as-one-object",
        "the server talks to load_policy/CosmosPolicy (or the planning policy); wire formats and batching never "
        "touch model, diffusion or data internals",
        importers=m("serve"),
        forbid=m("models", "diffusion", "data", "convert", "demo", "policy"),
        unless=m("policy.api"),
    ),
    Rule(
        "demo-is-data-and-an-eval-environment",
        "the demo world (simulator, dataset writer, env) uses data/ and eval's environment protocol, never the model",
        importers=m("demo"),
        forbid=m("training", "train", "serve", "policy", "planning", "convert", "models", "diffusion"),
    ),
    Rule(
        "config-is-below-everything-that-reads-it",
        "config validation builds the typed model/policy/data configs to check them; every entry point and "
        "training import it, so it imports none of them",
        importers=m("config_lib", "config_drift"),
        forbid=m("training", "train", "eval", "serve", "planning", "convert", "demo", "cli"),
    ),
    Rule(
        "config-is-light-at-import",
        "every command line (even --help) loads configs; jax, flax and the typed configs are imported only when "
        "validate() runs",
        importers=m("config_lib", "config_drift"),
        only=(STDLIB, "yaml", "ml_collections", *m("common", "config_lib")),
        scope="module",
    ),
    Rule(
        "entry-points-are-not-libraries",
        "entry points define absl flags and set process state when imported; a library importing one would "
        "define flags twice or start the wrong program (the __main__ wrappers are the exception)",
        importers=(PKG,),
        exempt=m("eval.__main__", "serve.__main__"),
        forbid=m(
            "train", "eval.main", "serve.main", "convert.__main__", "eval.__main__", "serve.__main__", "data.stats"
        ),
    ),
    Rule(
        "the-package-imports-no-repo-scripts",
        "the package is installed without configs/, benchmarks/ and tests/ (--config finds configs/ as a file)",
        importers=(PKG,),
        forbid=("configs", "benchmarks", "tests"),
    ),
    Rule(
        "optional-extras-are-imported-where-used",
        "the pyproject extras (torch, wandb, libero, lerobot, serve) are optional: a module that needs one "
        "imports it inside the function that uses it, so the package imports without them (serve/'s wire and "
        "websocket modules are imported only by the server and the server client)",
        importers=(PKG,),
        exempt=m("serve.openpi_ws", "serve.wire"),
        forbid=(
            "torch",
            "torchvision",
            "transformers",
            "sentencepiece",
            "wandb",
            "libero",
            "mujoco",
            "lerobot",
            "pyarrow",
            "av",
            "websockets",
            "msgpack",
            "scipy",
        ),
        scope="module",
    ),
)

IMPORTS = scan_package()


def _params(rules: Iterable[Rule]) -> Iterator:
    for rule in rules:
        marks = pytest.mark.xfail(strict=True, reason=rule.xfail) if rule.xfail else ()
        yield pytest.param(rule, id=rule.name, marks=marks)


@pytest.mark.parametrize("rule", _params(RULES))
def test_rule_holds(rule: Rule):
    bad = violations(rule, IMPORTS)
    assert not bad, f"{rule.name} ({rule.reason}):\n  " + "\n  ".join(map(str, bad))


# --------------------------------------------------------------------------------------------------
# The checker itself: every rule can fail


def _probe(rule: Rule) -> str:
    """A module the rule applies to."""
    return rule.importers[0] + "._probe"


def _sources(target: str, scope: str) -> list[tuple[str, bool]]:
    """Module sources importing ``target`` in the places ``scope`` counts, with their in-function flag."""
    mod, _, name = target.rpartition(".")
    stmt = f"from {mod} import {name}" if mod else f"import {name}"
    top, inner = f"{stmt}\n", f"def f():\n    {stmt}\n"
    return {"module": [(top, False)], "function": [(inner, True)]}.get(scope, [(top, False), (inner, True)])


def _violating_targets(rule: Rule) -> list[str]:
    targets = [t for t in rule.forbid if not under(t, rule.unless)]
    if rule.only is not None:
        targets.append("not_an_allowed_package.sub")
    return targets


@pytest.mark.parametrize("rule", RULES, ids=[r.name for r in RULES])
def test_rule_reports_a_synthetic_violation(rule: Rule):
    targets = _violating_targets(rule)
    assert targets, f"{rule.name} cannot fail: it forbids nothing"
    for target in targets:
        for source, in_function in _sources(target + ".x", rule.scope):
            found = violations(rule, scan_source(source, _probe(rule)))
            assert [(i.target, i.in_function) for i in found] == [(target + ".x", in_function)], (target, source)


@pytest.mark.parametrize("rule", RULES, ids=[r.name for r in RULES])
def test_rule_allows_its_exceptions_and_other_scopes(rule: Rule):
    probe = _probe(rule)
    for allowed in rule.unless + tuple(p for p in rule.only or () if p != STDLIB):
        assert not violations(rule, scan_source(f"import {allowed}\n", probe)), allowed
    if rule.scope != "any":  # the same import in the other place is not this rule's business
        other = "function" if rule.scope == "module" else "module"
        for source, _ in _sources(_violating_targets(rule)[0] + ".x", other):
            assert not violations(rule, scan_source(source, probe)), source
    for exempt in rule.exempt:  # an exempt module may import what the rule forbids
        for target in _violating_targets(rule):
            assert not violations(rule, scan_source(f"import {target}\n", exempt)), (exempt, target)


def test_scanner_resolves_names_and_scopes():
    src = (
        "import jax.numpy as jnp\n"
        "from cosmos_policy_jax import cli\n"
        "from . import sibling\n"
        "from ..data import registry\n"
        "class A:\n"
        "    from numpy import pi\n"
        "    def method(self):\n"
        "        import torch\n"
        "def outer():\n"
        "    def inner():\n"
        "        from safetensors.numpy import save_file\n"
    )
    got = [(i.target, i.line, i.in_function) for i in scan_source(src, f"{PKG}.eval.loading")]
    assert got == [
        ("jax.numpy", 1, False),
        (f"{PKG}.cli", 2, False),
        (f"{PKG}.eval.sibling", 3, False),
        (f"{PKG}.data.registry", 4, False),
        ("numpy.pi", 6, False),  # a class body runs at import
        ("torch", 8, True),
        ("safetensors.numpy.save_file", 11, True),
    ]
    # A package's own relative imports start from the package itself.
    assert scan_source("from .files import x\n", f"{PKG}.common", is_package=True)[0].target == f"{PKG}.common.files.x"
    assert under("jax.numpy", ["jax"]) and not under("jaxlib", ["jax"]) and under("os.path", [STDLIB])


def test_scan_sees_every_module():
    importers = {i.importer for i in IMPORTS}
    # Modules with at least one import, e.g. the two leaves of the graph and the deepest packages.
    for name in m("common.files", "layouts", "models.dit", "data.registry", "serve.wire", "eval.loading"):
        assert name in importers, name
    assert any(i.in_function for i in IMPORTS) and any(not i.in_function for i in IMPORTS)


# --------------------------------------------------------------------------------------------------
# The package map in docs/DEVELOPING.md


def _documented_rows() -> set[str]:
    text = (REPO / "docs" / "DEVELOPING.md").read_text()
    section = text.split("## Package map", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([^`]+)`", section, flags=re.M))


def _needs_a_row(path: Path) -> bool:
    """Every module except ``__init__.py`` files that hold at most a docstring."""
    if path.name != "__init__.py":
        return True
    body = ast.parse(path.read_text()).body
    return len(body) > 1 or (len(body) == 1 and not isinstance(body[0], ast.Expr))


def test_package_map_has_a_row_per_module():
    rows = _documented_rows()
    modules = [p for p in sorted((REPO / PKG).rglob("*.py")) if _needs_a_row(p)]
    missing = [str(p.relative_to(REPO)) for p in modules if str(p.relative_to(REPO)) not in rows]
    assert not missing, f"docs/DEVELOPING.md 'Package map' has no row for: {', '.join(missing)}"
    assert {"configs/", "benchmarks/"} <= rows
