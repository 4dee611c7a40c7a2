"""The package's shape: data flows export -> precision -> backends -> evaluate -> report, and no step reaches back."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "resnext_deploy"

# Lower layers never import higher ones (function-level imports included). Same-layer imports are fine.
LAYERS = {
    "errors": 0,
    "serde": 0,
    "patches": 0,  # third-party patches, each scoped (typer, pytriton): imports nothing of the package
    "ui": 0,
    "environment": 0,
    "archs": 1,
    "weights_table": 1,
    "weights": 1,
    "models": 1,
    "artifacts": 1,
    "parity": 1,
    "demo": 2,
    "checkpoint": 2,
    "source": 2,
    "data": 2,
    "export": 3,
    "backends": 3,
    "precision": 4,
    "inspect.accuracy": 4,  # the per-site error code the INT8 search shares with inspect
    "inspect.sites": 4,
    "evaluate": 5,
    "inspect": 6,
    "report": 6,
    "serving": 6,
    "pipeline": 7,
    "cli": 8,
    "cli_options": 8,
    "__main__": 9,
}


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    """The layer of a module; names of the package root itself (``__version__``) are at the bottom."""
    keys = [k for k in LAYERS if module == k or module.startswith(k + ".")]
    return LAYERS[max(keys, key=len)] if keys else 0


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module inside the package, whether the import is at module level)."""
    module = _module(path)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            names = [target] if node.module else [f"{target}.{a.name}".strip(".") for a in node.names]
            found += [(name, id(node) in top) for name in names]
    return found


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_a_later_layer(path: Path) -> None:
    module = _module(path)
    if module == "":
        return
    later = [target for target, _ in _imports(path) if target and _layer(target) > _layer(module)]
    assert not later, f"{module} (layer {_layer(module)}) imports {later}"


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = list(graph.get(start, ()))
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo += graph.get(node, ())
    return seen


def test_no_import_cycle() -> None:
    """No module reaches itself through imports: module level, in functions or for type checking alike.

    A circle at function level still ties its modules into one piece: none can be read, moved or tested
    without the others, and the first import order that runs the circle at module level breaks.
    """
    modules = {_module(p) for p in SOURCES}
    graph = {_module(p): {t for t, _ in _imports(p) if t in modules} for p in SOURCES}
    reach = {node: _reachable(graph, node) for node in graph}
    circles = {
        frozenset({node, *(o for o in reach[node] if node in reach[o])}) for node in graph if node in reach[node]
    }
    assert not circles, [sorted(circle) for circle in circles]


# What code outside backends/ may import of them: the generic interface, and each backend's face (its module, or
# its package's __init__ for a backend of several modules). The rest is the backend's own business.
BACKEND_FACES = {
    "backends",
    "backends.base",
    "backends.registry",
    "backends.torch",
    "backends.onnxruntime",
    "backends.openvino",
    "backends.tensorrt",
}


def test_backends_are_reached_only_through_their_faces() -> None:
    private = sorted(
        f"{_module(p)} -> {target}"
        for p in SOURCES
        if not _module(p).startswith("backends")
        for target, _ in _imports(p)
        if target.startswith("backends.") and target not in BACKEND_FACES
    )
    assert not private, private


def test_the_generic_backend_interface_names_no_backend() -> None:
    """A backend plugs into base and registry (through ``BUILTIN``); they never reach for one by name."""
    generic = {"backends", "backends.base", "backends.registry"}
    named = sorted(
        f"{_module(p)} -> {target}"
        for p in SOURCES
        if _module(p) in generic
        for target, _ in _imports(p)
        if target.startswith("backends.") and target not in generic
    )
    assert not named, named


def test_tensorrt_is_imported_only_by_its_backend() -> None:
    importers = sorted(
        _module(p)
        for p in SOURCES
        if any(
            isinstance(n, ast.Import | ast.ImportFrom)
            and any((a.name if isinstance(n, ast.Import) else n.module or "").startswith("tensorrt") for a in n.names)
            for n in ast.walk(ast.parse(p.read_text()))
        )
    )
    assert all(m.startswith("backends.tensorrt") or m == "environment" for m in importers), importers


def test_the_bundled_demo_is_reached_only_through_the_source_layer() -> None:
    importers = sorted(
        {
            _module(p)
            for p in SOURCES
            if not _module(p).startswith("demo") and any(t == "demo" or t.startswith("demo.") for t, _ in _imports(p))
        }
    )
    assert importers == ["source"], importers
