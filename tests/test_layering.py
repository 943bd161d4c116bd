"""The package's layers: a module imports only from its own layer or the layers below it, and no
two modules import each other, directly or through others. Every import counts, those inside
functions included (parsed with ast, nothing is imported)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ddpm_lab"

# Lowest first. A module is placed by the longest entry that is its name or a package above it
# ("ddpm_lab" itself is only the package's __init__).
LAYERS: list[tuple[str, ...]] = [
    ("ddpm_lab", "ddpm_lab.errors", "ddpm_lab.rng", "ddpm_lab.cli", "ddpm_lab.checkpoint_io", "ddpm_lab.viz",
     "ddpm_lab.video_files"),
    ("ddpm_lab.diffusion",),
    ("ddpm_lab.nets",),
    ("ddpm_lab.data",),
    ("ddpm_lab.autoencoders",),
    ("ddpm_lab.modules",),
    ("ddpm_lab.callbacks", "ddpm_lab.metrics"),
    ("ddpm_lab.config_check", "ddpm_lab.loggers", "ddpm_lab.fit_loop", "ddpm_lab.runs", "ddpm_lab.checkpoints",
     "ddpm_lab.tasks", "ddpm_lab.diffusers_export", "ddpm_lab.pretrained", "ddpm_lab.teachers"),
    ("ddpm_lab.build",),
    ("ddpm_lab.train", "ddpm_lab.sample", "ddpm_lab.evaluate", "ddpm_lab.video_eval", "ddpm_lab.export",
     "ddpm_lab.task_eval", "ddpm_lab.edit"),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(name: str) -> int:
    best, found = -1, None
    for index, layer in enumerate(LAYERS):
        for prefix in layer:
            inside = name.startswith(prefix + ".") and prefix != "ddpm_lab"
            if (name == prefix or inside) and len(prefix) > best:
                best, found = len(prefix), index
    assert found is not None, f"{name} is in no layer: add it to LAYERS"
    return found


def project_imports(path: Path, name: str) -> set[str]:
    """The ddpm_lab modules `path` imports (anywhere in the file), as dotted names."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            # `from ddpm_lab.x import y` imports the submodule ddpm_lab.x.y when there is one
            found.update(f"{base}.{a.name}" for a in node.names if is_module(f"{base}.{a.name}"))
    return {m for m in found if m == "ddpm_lab" or m.startswith("ddpm_lab.")}


def is_module(dotted: str) -> bool:
    path = PACKAGE.parent.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in project_imports(path, name):
            # an import of a name inside a module resolves to that module
            while imported not in modules and "." in imported:
                imported = imported.rpartition(".")[0]
            if imported != name and not name.startswith(imported + "."):   # a package's own __init__
                targets.add(imported)
        graph[name] = targets
    return graph


def test_every_import_goes_to_the_same_or_a_lower_layer():
    upward = [f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
              for a, targets in import_graph().items() for b in sorted(targets) if layer_of(b) > layer_of(a)]
    assert not upward, "\n".join(upward)


def test_the_imports_have_no_cycle():
    graph = import_graph()
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_the_layering_check_sees_function_local_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from ddpm_lab.train import run\n    return run\n")
    assert "ddpm_lab.train" in project_imports(source, "ddpm_lab.diffusion.m")


def test_every_module_is_in_a_layer_and_no_module_is_over_300_lines():
    for path in PACKAGE.rglob("*.py"):
        layer_of(module_name(path))
        lines = len(path.read_text().splitlines())
        assert lines <= 300, f"{path.relative_to(PACKAGE.parent)} has {lines} lines"


def test_docs_layout_lists_every_module():
    listed = (PACKAGE.parent / "docs" / "layout.md").read_text()
    missing = [str(p.relative_to(PACKAGE.parent)) for p in sorted(PACKAGE.rglob("*.py"))
               if f"`{p.relative_to(PACKAGE.parent)}`" not in listed]
    assert not missing, f"docs/layout.md does not list: {missing}"
