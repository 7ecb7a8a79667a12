"""The house rules of docs/architecture.md, checked on the source: layers, interfaces, module size, one seam to C."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import tensorcodec

PACKAGE = Path(tensorcodec.__file__).parent

# Lowest first. A module may import modules of its own layer or of the layers below, never above.
LAYERS: list[tuple[str, list[str]]] = [
    ("base", ["_version", "errors", "dtypes"]),
    ("seam to C", ["_c"]),
    ("codecs", ["codecs", "kernels"]),
    ("leaves in", ["leaves"]),
    ("byte format", ["wire"]),
    ("leaves out", ["materialize"]),
    ("policy", ["policy", "reference", "feedback"]),
    ("encode and decode", ["core"]),
    (
        "on top",
        [
            "stream",
            "files",
            "aggregation",
            "accounting",
            "budget",
            "charts",
            "interop",
            "models",
            "testing",
            "integrations",
        ],
    ),
    ("entry points", ["cli", "__main__", "transports", "__init__"]),
]
MAX_LINES = 600


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _name(path: Path) -> str:
    """Dotted name inside the package: ``codecs.quant4``, ``core``, ``__init__``."""
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def _layer(name: str) -> int:
    top = name.split(".")[0]
    for rank, (_, members) in enumerate(LAYERS):
        if top in members:
            return rank
    raise AssertionError(f"module {name!r} is in no layer of tests/test_architecture.py (and docs/architecture.md)")


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module inside the package, names taken from it, line) for every import of the package."""
    name = _name(path)
    package = name.split(".") if path.name == "__init__.py" and name != "__init__" else name.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if node.module and node.module.startswith("tensorcodec"):
                    target = node.module.split(".")[1:]
                else:
                    continue
            else:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                target = [*base, *(node.module.split(".") if node.module else [])]
            names = [alias.name for alias in node.names]
            if not target:  # from . import x, y: modules of the package, or names of its __init__
                for n in names:
                    is_module = (PACKAGE / f"{n}.py").exists() or (PACKAGE / n).is_dir()
                    found.append((n, [], node.lineno) if is_module else ("__init__", [n], node.lineno))
            else:
                found.append((".".join(target), names, node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("tensorcodec."):
                    found.append((alias.name.split(".", 1)[1], [], node.lineno))
    return found


@pytest.mark.parametrize("path", _modules(), ids=_name)
def test_imports_go_down_the_layers(path: Path) -> None:
    here = _layer(_name(path))
    for target, _, line in _imports(path):
        if target.split(".")[0] in ("_native", "_fastwire", "_fasttree"):
            continue  # only _c imports these (test_c checks)
        assert _layer(target) <= here, (
            f"{_name(path)}:{line} ({LAYERS[here][0]}) imports {target} ({LAYERS[_layer(target)][0]}), a layer above"
        )


@pytest.mark.parametrize("path", _modules(), ids=_name)
def test_no_private_name_crosses_modules(path: Path) -> None:
    for target, names, line in _imports(path):
        private = [n for n in names if n.startswith("_") and n != "__version__"]
        assert not private, f"{_name(path)}:{line} imports {private} from {target}: make them part of its interface"


@pytest.mark.parametrize("path", _modules(), ids=_name)
def test_no_private_attribute_of_another_module(path: Path) -> None:
    """``module._name`` where ``module`` is one of the package's modules, imported as ``from . import module``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    aliases = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level > 0 and not node.module
        for alias in node.names
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            assert not (node.attr.startswith("_") and not node.attr.startswith("__")), (
                f"{_name(path)}:{node.lineno} reads {node.value.id}.{node.attr}: make it part of its interface"
            )


@pytest.mark.parametrize("path", _modules(), ids=_name)
def test_modules_stay_small(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{_name(path)} has {lines} lines (at most {MAX_LINES}): split the idea it owns"


def test_the_engines_are_imported_only_with_their_integration() -> None:
    """``import tensorcodec`` (and ``tensorcodec.integrations``) pulls in no federated-learning engine."""
    import subprocess
    import sys

    code = (
        "import sys, tensorcodec, tensorcodec.integrations, tensorcodec.integrations.common\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'nvflare', 'flwr', 'ray'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"
