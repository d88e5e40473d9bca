"""The package's structure: imports flow one way, the method registry is the single source of truth,
and the command line starts without torch."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "concept_erase"

# Lowest first. A module may import from its own layer or a lower one, never from a higher one.
# The package root is the facade on top: it exposes the library lazily and attaches the pipeline methods.
LAYERS = [
    {"concept_erase.version", "concept_erase.errors", "concept_erase._io", "concept_erase.config"},
    {"concept_erase.images", "concept_erase.viz", "concept_erase.concepts", "concept_erase.objectives"},
    {"concept_erase.adapter", "concept_erase.lora_formats", "concept_erase.ldm_format", "concept_erase.diffusion",
     "concept_erase.codebook", "concept_erase.hub"},
    {"concept_erase.world"},
    {"concept_erase.loading"},
    {"concept_erase.methods"},
    {"concept_erase.evaluation"},
    {"concept_erase.demo", "concept_erase.bench", "concept_erase.quickstart", "concept_erase.integrations"},
    {"concept_erase.cli", "concept_erase"},
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Package modules ``name`` imports (anywhere in the file), plus the packages that importing them
    executes (their ``__init__``), except ``name``'s own ancestors."""
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names)  # `from pkg import submodule`
    edges = set()
    ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    for module in found:
        if module not in known:
            continue
        parts = module.split(".")
        for i in range(1, len(parts) + 1):
            target = ".".join(parts[:i])
            if target in known and target != name and target not in ancestors:
                edges.add(target)
    return edges


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _layer(module: str) -> int:
    best = None
    for i, layer in enumerate(LAYERS):
        for unit in layer:
            if (module == unit or module.startswith(unit + ".")) and (best is None or len(unit) > len(best[1])):
                best = (i, unit)
    assert best is not None, f"{module} belongs to no layer of this test; add it to LAYERS"
    return best[0]


def test_every_module_has_a_layer(graph):
    for module in graph:
        _layer(module)


def test_no_import_circle(graph):
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_no_import_runs_up_a_layer(graph):
    upward = [f"{a} (layer {_layer(a)}) -> {b} (layer {_layer(b)})"
              for a, targets in graph.items() for b in targets if _layer(b) > _layer(a)]
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(sorted(upward))


def test_library_code_never_imports_the_command_line(graph):
    bad = [f"{a} -> {b}" for a, targets in graph.items() if not a.startswith("concept_erase.cli")
           for b in targets if b == "concept_erase.cli" or b.startswith("concept_erase.cli.")]
    assert not bad, bad


def test_the_checker_sees_a_circle_and_an_upward_import(tmp_path):
    """The checks above can fail: a relative import up the layers is read as an edge."""
    path = PACKAGE / "methods" / "esd.py"
    edges = _imports("concept_erase.methods.esd", path, set(_modules()))
    assert "concept_erase.diffusion" in edges and "concept_erase.methods.common" in edges
    fake = tmp_path / "x.py"
    fake.write_text("from ..cli import main\nfrom .. import evaluation\n")
    edges = _imports("concept_erase.world.x", fake, set(_modules()))
    assert {"concept_erase.cli", "concept_erase.evaluation"} <= edges
    assert _layer("concept_erase.world.x") < _layer("concept_erase.evaluation")


# ---------------------------------------------------------------- the registry is the single source of truth
def test_every_method_is_reachable_from_the_command_line_and_bench():
    from concept_erase.bench import METHOD_ORDER
    from concept_erase.cli import build_parser
    from concept_erase.methods import METHODS

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    method_action = next(a for a in sub["erase"]._actions if a.dest == "method")
    bench_action = next(a for a in sub["bench"]._actions if a.dest == "methods")
    assert list(method_action.choices) == list(METHODS)
    assert list(bench_action.choices) == list(METHODS)
    assert tuple(METHOD_ORDER) == tuple(METHODS)
    for name, method in METHODS.items():  # and each one builds its config from the command line's flags
        args = sub["erase"].parse_args(["--method", name, "--out", "x.safetensors"])
        assert args.method == name
        assert isinstance(method.config(), method.config_class)


# ---------------------------------------------------------------- a fast command line, methods attached on import
def _run(code: str) -> str:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout


def test_help_and_version_import_neither_torch_nor_diffusers():
    out = _run(
        "import sys, contextlib, io\n"
        "from concept_erase.cli import main\n"
        "for argv in (['--help'], ['--version']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()) as buf:\n"
        "        try:\n"
        "            main(argv)\n"
        "        except SystemExit:\n"
        "            pass\n"
        "    assert 'concept-erase' in buf.getvalue(), buf.getvalue()\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'gradio') if m in sys.modules))\n"
    )
    assert out.strip() == "[]"


@pytest.mark.parametrize("order", ["concept_erase first", "diffusers first"])
def test_import_attaches_the_pipeline_methods_in_either_order(order):
    first, second = ("import concept_erase", "import diffusers") if order == "concept_erase first" else \
        ("import diffusers", "import concept_erase")
    out = _run(f"{first}\n{second}\nfrom diffusers import DiffusionPipeline\n"
               "print(all(hasattr(DiffusionPipeline, m) for m in ('load_unlearning_adapter', "
               "'set_unlearning_scale', 'fuse_unlearning_adapter', 'unload_unlearning_adapter')))\n")
    assert out.strip() == "True"
