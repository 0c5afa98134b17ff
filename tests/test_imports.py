"""Imports point one way: tree <- retrieval <- step <- engine / plugin <- tools, checked on every
module's own ``import`` statements (parsed with ``ast``, function-level and ``TYPE_CHECKING``
ones included), and no module is imported by a string name."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "graft_sglang"
# (layer, rank, module prefixes): a module may import its own layer's modules and those of
# layers of lower rank only; layers of one rank (the engine and the plugin) never import each
# other. The longest matching prefix places a module.
LAYERS = (
    # leaves without Graft imports: the EAGLE-3 model definition (the drafter's, apart from the
    # head's training code), data sets, the server launcher's process handle and CPU platform
    ("leaves", 0, ("graft_sglang.eagle3.head", "graft_sglang.eagle3.export",
                   "graft_sglang.datasets", "graft_sglang.server_process",
                   "graft_sglang.cpu.platform", "graft_sglang.cpu.stand_in")),
    ("tree", 1, ("graft_sglang.tree", "graft_sglang.verify")),
    ("retrieval", 2, ("graft_sglang.retrieval",)),
    ("step", 3, ("graft_sglang.stages", "graft_sglang.calibration", "graft_sglang.cost",
                 "graft_sglang.recipe", "graft_sglang.step")),
    ("engine", 4, ("graft_sglang.engine",)),
    ("plugin", 4, ("graft_sglang.plugin",)),
    # the head's training and evaluation code, the CPU server launcher
    ("tools", 5, ("graft_sglang.eagle3", "graft_sglang.cpu")),
)
STRING_IMPORTS = ("import_module", "__import__")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> tuple[str, int] | None:
    best = None
    for name, rank, prefixes in LAYERS:
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (
                    best is None or len(prefix) > best[0]):
                best = (len(prefix), name, rank)
    return None if best is None else best[1:]


def graft_imports(source: str, module: str) -> list[str]:
    """The ``graft_sglang`` modules ``source`` (the text of ``module``) imports."""
    package = module.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing package
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            # ``from package import submodule`` imports the submodule (the package's own
            # ``__init__`` is a namespace), ``from module import name`` the module
            subs = [f"{base}.{a.name}" for a in node.names if is_module(f"{base}.{a.name}")]
            out += subs or [base]
    return [m for m in out if m.startswith("graft_sglang.")]


def is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def violations(source: str, module: str) -> list[str]:
    """Every import of ``module`` against the layer order, and every import by string name."""
    own = layer_of(module)
    if own is None:
        return [f"{module} is in no layer (add it to LAYERS)"]
    found = []
    for target in graft_imports(source, module):
        theirs = layer_of(target)
        if theirs is None:
            found.append(f"{module} imports {target}, which is in no layer")
        elif theirs[0] != own[0] and theirs[1] >= own[1]:
            found.append(f"{module} ({own[0]}) imports {target} ({theirs[0]})")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in STRING_IMPORTS:
                found.append(f"{module}:{node.lineno} imports by string name ({name})")
    return found


def test_imports_point_one_way() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        if module != "graft_sglang":
            found += violations(path.read_text(), module)
    assert found == []


@pytest.mark.parametrize(("module", "source", "why"), [
    ("graft_sglang.tree.retrieved", "from graft_sglang.retrieval.base import Continuations",
     "(tree) imports graft_sglang.retrieval.base (retrieval)"),
    ("graft_sglang.engine.runner", "from graft_sglang.plugin import worker",
     "(engine) imports graft_sglang.plugin.worker (plugin)"),
    ("graft_sglang.engine.decode", "def f():\n    from graft_sglang.eagle3.train import x",
     "(engine) imports graft_sglang.eagle3.train (tools)"),
    ("graft_sglang.retrieval.base", "if TYPE_CHECKING:\n    from ..step import GraftStep",
     "(retrieval) imports graft_sglang.step (step)"),
    ("graft_sglang.engine.runner", "import importlib\nm = importlib.import_module('x')",
     "imports by string name (import_module)"),
    ("graft_sglang.newthing", "", "is in no layer"),
])
def test_a_reversed_import_is_caught(module: str, source: str, why: str) -> None:
    assert any(why in v for v in violations(source, module)), violations(source, module)


def test_allowed_imports_pass() -> None:
    assert violations("from graft_sglang.tree.builder import GraftConfig\n"
                      "from graft_sglang.eagle3.head import Eagle3Head",
                      "graft_sglang.engine.cost_probe") == []
