"""The package's import graph, read from the source (every ``import``, also inside functions and
under ``TYPE_CHECKING``): no import circle, and no import from a lower layer up to a higher one.

Layers, bottom up: ``errors`` / ``utils`` / ``ops`` (import only each other); networks, losses
and metrics (never the trainer or the evaluation); the library; the command-line entry points
(modules run as ``python -m jaxhead.X``), which only other entry points import; ``configs/``
above the library (only an entry point reads a config module)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OUTSIDE = ("configs", "convert_weights", "benchmarks", "tests")
BOTTOM = ("jaxhead.errors", "jaxhead.utils", "jaxhead.ops")
NETWORKS = ("jaxhead.models", "jaxhead.losses", "jaxhead.metrics")
PIPELINES = ("jaxhead.training", "jaxhead.evaluation")


def _modules(root: Path) -> dict[str, Path]:
    out = {}
    for p in sorted((root / "jaxhead").rglob("*.py")):
        name = ".".join(p.relative_to(root).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = p
    return out


def _imports(name: str, path: Path, mods: dict[str, Path]) -> list[str]:
    """Every module ``name`` imports: jaxhead modules by their module name, others by their
    top-level package."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base
                       for a in node.names]
        else:
            continue
        for t in targets:
            if not t.startswith("jaxhead"):
                out.append(t.split(".")[0])
                continue
            while t and t not in mods:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.append(t)
    return out


def graph(root: Path = ROOT) -> tuple[dict[str, set[str]], set[str]]:
    """``({module: imported modules}, entry points)`` of ``root/jaxhead``."""
    mods = _modules(root)
    edges = {m: set(_imports(m, p, mods)) for m, p in mods.items()}
    entry = {m for m, p in mods.items() if '__name__ == "__main__"' in p.read_text()}
    return edges, entry


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in edges:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def upward(edges: dict[str, set[str]], entry: set[str]) -> list[str]:
    """Every import from a lower layer up to a higher one, as ``"a -> b"``."""
    bad = []
    for m, targets in sorted(edges.items()):
        for t in sorted(targets):
            if t in OUTSIDE and m not in entry:
                bad.append(f"{m} -> {t} (only an entry point reads configs/)")
            if m.startswith(BOTTOM) and t.startswith("jaxhead") and not t.startswith(BOTTOM):
                bad.append(f"{m} -> {t} (errors / utils / ops import only each other)")
            if m.startswith(NETWORKS) and t.startswith(PIPELINES):
                bad.append(f"{m} -> {t} (networks, losses and metrics are below the trainer)")
            if t in entry and m not in entry:
                bad.append(f"{m} -> {t} (a library module imports a command-line entry point)")
    return bad


def test_no_import_circles():
    edges, _ = graph()
    assert cycles(edges) == []


def test_no_import_runs_up_a_layer():
    edges, entry = graph()
    assert {"jaxhead.train", "jaxhead.render", "jaxhead.evaluate"} <= entry
    assert upward(edges, entry) == []


def test_generator_formats_name_their_loaders():
    """The loader table's entries resolve (a renamed function would only fail on first use)."""
    from jaxhead import generators
    from jaxhead.models import panohead

    assert panohead.FORMAT == generators.DEFAULT_FORMAT
    for fmt in list(generators.LOADERS):
        assert callable(generators._loader(fmt))


@pytest.mark.parametrize("files,expect", [
    ({"a": "from jaxhead import b", "b": "def f():\n    from jaxhead.a import x"},
     "cycle"),
    ({"utils/u": "from jaxhead.training import t", "training/t": ""}, "utils"),
    ({"models/m": "import jaxhead.training.t", "training/t": ""}, "networks"),
    ({"lib": "from jaxhead.cli import main", "cli": 'if __name__ == "__main__":\n    pass'},
     "entry point"),
    ({"lib": "from configs import base"}, "configs"),
])
def test_the_checks_catch_what_they_forbid(tmp_path, files, expect):
    for rel, text in files.items():
        p = tmp_path / "jaxhead" / f"{rel}.py"
        p.parent.mkdir(parents=True, exist_ok=True)
        for d in [p.parent, *p.parent.parents]:
            if d == tmp_path:
                break
            (d / "__init__.py").touch()
        p.write_text(text)
    edges, entry = graph(tmp_path)
    found = (["cycle"] if cycles(edges) else []) + upward(edges, entry)
    assert any(expect in f for f in found), found
