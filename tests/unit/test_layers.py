"""The layer rule, read from the source: each layer of the server imports only the layers below it
(imports inside functions count too), and the export reaches the server only through ``models``
(and ``errors``). The ONNX Runtime path importing no torch is checked by running it
(tests/pipeline/test_pipeline.py::test_serving_path_never_imports_torch)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVER = ROOT / "server" / "seglabel_server"

# Bottom first: each folder of the server is a layer. The package's own root modules (errors, types,
# amg, metrics, memory) are the base every layer may use; ``__main__`` is the process's entry.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("models", ("models",)),
    ("backends", ("backends",)),
    ("scheduler", ("scheduler",)),
    ("storage", ("storage",)),
    ("pipeline", ("pipeline",)),
    ("service", ("service",)),
    ("transport", ("transport", "__main__")),
]
# Layers of one rank do not import each other.
RANK = {
    "base": 0,
    "models": 1,
    "backends": 2,
    "scheduler": 3,
    "storage": 3,
    "pipeline": 4,
    "service": 5,
    "transport": 6,
}


def layer_of(module: str) -> str:
    """The layer of a ``seglabel_server`` module (dotted name)."""
    rest = module.removeprefix("seglabel_server").lstrip(".")
    head = rest.split(".")[0]
    for name, prefixes in LAYERS:
        if head in prefixes:
            return name
    if "." not in rest:  # the package itself or one of its root modules
        return "base"
    pytest.fail(f"{module}: in no layer (a new folder needs its place in LAYERS)")


def module_name(path: Path, package_root: Path) -> str:
    rel = path.relative_to(package_root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, package_root: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in ``path``, relative ones resolved."""
    here = module_name(path, package_root).split(".")
    if path.name != "__init__.py":
        here = here[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
            out += [
                (node.lineno, f"{base}.{a.name}" if _is_module(base, a.name) else base) for a in node.names
            ]
    return out


def _is_module(package: str, name: str) -> bool:
    """``from package import name`` names a module (a file or folder of the package)."""
    if not package.startswith("seglabel_server"):
        return False
    folder = SERVER.parent / package.replace(".", "/")
    return (folder / f"{name}.py").is_file() or (folder / name / "__init__.py").is_file()


def test_every_layer_imports_only_the_layers_below_it():
    wrong, counted = [], 0
    for path in sorted(SERVER.rglob("*.py")):
        mine = layer_of(module_name(path, SERVER))
        for line, target in imports(path, SERVER):
            if not target.startswith("seglabel_server"):
                continue
            counted += 1
            theirs = layer_of(target)
            if theirs != mine and RANK[theirs] >= RANK[mine]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} ({mine}) imports {target} ({theirs})")
    assert counted > 100  # the rule read real imports
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_the_export_reaches_the_server_only_through_models():
    export = ROOT / "export" / "seglabel_export"
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {target}"
        for path in sorted(export.rglob("*.py"))
        for line, target in imports(path, export)
        if target.startswith("seglabel_server") and layer_of(target) != "models" and target != "seglabel_server.errors"
        and target != "seglabel_server"  # (the package's version)
    ]  # fmt: skip
    assert not wrong, "\n".join(wrong)


def test_the_rule_catches_an_upward_import(tmp_path):
    """The checker itself: a pipeline module importing the service is found."""
    pkg = tmp_path / "seglabel_server" / "pipeline"
    pkg.mkdir(parents=True)
    (pkg / "bad.py").write_text("from seglabel_server.service import SeglabelService\n")
    ((_, target),) = imports(pkg / "bad.py", tmp_path / "seglabel_server")
    assert layer_of("seglabel_server.pipeline.bad") == "pipeline" and layer_of(target) == "service"
    assert RANK[layer_of(target)] > RANK["pipeline"]


def test_no_module_of_the_server_or_the_client_is_over_350_lines():
    """God modules grow by accretion: a module past 350 lines is split by job before it lands."""
    generated = ROOT / "client" / "seglabel_api" / "pb"
    sizes = {
        path.relative_to(ROOT).as_posix(): len(path.read_text().splitlines())
        for top in ("server", "client")
        for path in (ROOT / top).rglob("*.py")
        if generated not in path.parents
    }
    assert len(sizes) > 50
    assert not {p: n for p, n in sizes.items() if n > 350}, sorted(sizes.items(), key=lambda kv: -kv[1])[:5]
