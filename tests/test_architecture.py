"""The shape of the code: dependencies point one way (web and workers use hean; hean uses
neither), the web process loads no worker task module and no compiled core, and no import
cycle exists between the project's modules."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("hean", "workers", "web")
TASK_MODULES = (
    "workers.engine",
    "workers.default",
    "workers.pulse",
    "workers.llm",
    "workers.shard",
    "workers.execution",
)


def module_files() -> dict[str, Path]:
    files = {"celeryconfig": ROOT / "celeryconfig.py"}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            files[name] = path
    return files


MODULES = module_files()


def resolve(name: str) -> str | None:
    """The project module `name` refers to (a module, or the package holding that name)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(path: Path, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    if top_level_only:  # `if TYPE_CHECKING:` blocks never run
        nodes = [n for n in nodes if not (isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test))]
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {target for n in names if (target := resolve(n)) is not None}
    return found


def imports_between(importer: str, imported: tuple[str, ...]) -> set[tuple[str, str]]:
    """(module, target) for every import, lazy ones too, from package `importer` into `imported`."""
    return {
        (name, target)
        for name, path in MODULES.items()
        if name.split(".")[0] == importer
        for target in imports_of(path, top_level_only=False)
        if target.split(".")[0] in imported
    }


def test_hean_imports_no_worker_web_or_celery_config_module() -> None:
    assert not imports_between("hean", ("workers", "web", "celeryconfig"))


def test_web_imports_nothing_from_workers_but_the_celery_app() -> None:
    offenders = {
        (n, t) for n, t in imports_between("web", ("workers",)) if t not in ("workers", "workers.app")
    }
    assert not offenders
    # and the workers package itself imports only the app
    assert imports_of(MODULES["workers"], top_level_only=True) <= {"workers.app"}


def test_no_import_cycle_between_project_modules() -> None:
    # every import, lazy ones in functions included: a cycle hidden in a function is one too;
    # a package and its own submodules (a package __init__ re-exporting them) are not edges
    graph = {
        name: {
            t
            for t in imports_of(path, top_level_only=False)
            if t != name and not t.startswith(name + ".") and not name.startswith(t + ".")
        }
        for name, path in MODULES.items()
    }
    cycles = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("mode", ["threading"])
def test_create_app_loads_neither_the_core_nor_any_task_module(mode: str) -> None:
    probe = f"""
import sys
from web.app import create_app
create_app(async_mode={mode!r})
loaded = sorted(m for m in sys.modules if m == "hean._core" or m.startswith({TASK_MODULES!r}))
print(",".join(loaded))
"""
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == ""


def test_every_type_ignore_says_why() -> None:
    bare = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in MODULES.values()
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if "# type: ignore" in line and not re.search(r"# type: ignore\[[\w,-]+\]  # \S", line)
    ]
    assert not bare, "a type: ignore without its reason: " + ", ".join(bare)
