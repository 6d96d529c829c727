"""The documentation in ``docs/`` matches the code.

``docs/cli.md`` and ``docs/tasks.md`` are what ``scripts/generate_docs.py`` writes today, and document every
command, option and task; every path and dotted name ``docs/architecture.md`` cites exists, every module of
``butler/``, ``graph/`` and ``tasks/`` is listed there, and the import layers it describes hold.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

from butler.cli import cli as butler_cli
from graph.cli import cli as pipetask_cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
GENERATED = ("cli.md", "tasks.md")
PACKAGES = ("butler", "graph", "tasks")
# Top-level directories whose paths docs/architecture.md may cite.
_PATH = re.compile(r"`((?:butler|graph|tasks|repo_template|scripts|tests|benchmarks|docs)/[^`\s]*)`")
# Dotted names of modules and objects (file names such as `butler.yaml` are not).
_DOTTED = re.compile(r"`((?:butler|graph|tasks)(?:\.[A-Za-z_]\w*)+)(?<!\.yaml)(?<!\.py)(?<!\.md)`")


def _architecture() -> str:
    return (DOCS / "architecture.md").read_text()


def _modules(package: str) -> list[str]:
    paths = (ROOT / package).rglob("*.py")
    return sorted(p.relative_to(ROOT).as_posix() for p in paths if "__pycache__" not in p.parts)


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("docs")
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "generate_docs.py"), "--output-dir", str(out)],
        check=True, capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    return out


@pytest.mark.parametrize("name", GENERATED)
def test_generated_docs_are_up_to_date(regenerated: Path, name: str):
    committed = (DOCS / name).read_text().splitlines()
    fresh = (regenerated / name).read_text().splitlines()
    diff = list(difflib.unified_diff(committed, fresh, f"docs/{name}", "regenerated", lineterm="", n=1))
    assert not diff, f"docs/{name} is out of date: run make docs\n" + "\n".join(diff[:40])


def _section(text: str, heading: str) -> str:
    """The text of docs/cli.md from a command's heading to the next heading."""
    start = text.index(heading)
    end = text.find("\n#", start + len(heading))
    return text[start : end if end >= 0 else len(text)]


@pytest.mark.parametrize(("prog", "group"), [("butler", butler_cli), ("pipetask", pipetask_cli)])
def test_cli_reference_documents_every_command_and_option(regenerated: Path, prog: str, group: click.Group):
    text = (regenerated / "cli.md").read_text()
    assert group.commands, f"{prog} has no commands"
    for name, command in group.commands.items():
        section = _section(text, f"### `{prog} {name}`")
        for param in command.params:
            if isinstance(param, click.Option):
                for opt in param.opts:
                    assert f"`{opt}" in section or f", {opt}" in section, f"{prog} {name}: option {opt} undocumented"
            else:
                assert param.human_readable_name in section, f"{prog} {name}: argument {param.name} undocumented"


def test_task_reference_documents_every_config_field(regenerated: Path):
    from tasks.characterize import CharacterizeImageTask
    from tasks.subtract import AlardLuptonSubtractTask

    text = (regenerated / "tasks.md").read_text()
    for task in (CharacterizeImageTask, AlardLuptonSubtractTask):
        section = _section(text, f"### {task.__name__}")
        config = task.ConfigClass()
        for field in type(config).model_fields:
            if field not in ("connections", "saveLogOutput"):
                assert f"| `{field}`" in section, f"{task.__name__}: config field {field} undocumented"
        for name, connection in type(config).ConnectionsClass(config=config).allConnections.items():
            assert f"| `{name}` | {type(connection).__name__} | `{connection.name}` |" in section


def test_architecture_paths_exist():
    paths = set(_PATH.findall(_architecture()))
    assert len(paths) > 100, "docs/architecture.md should cite the modules by path"
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attribute in parts[i:]:
            if not hasattr(obj, attribute):
                return False
            obj = getattr(obj, attribute)
        return True
    return False


def test_architecture_dotted_names_resolve():
    names = set(_DOTTED.findall(_architecture()))
    assert len(names) > 10
    unresolved = sorted(n for n in names if not _resolves(n))
    assert not unresolved, f"docs/architecture.md names objects that do not exist: {unresolved}"


def test_architecture_lists_every_module():
    cited = set(_PATH.findall(_architecture()))
    missing = [m for package in PACKAGES for m in _modules(package) if m not in cited]
    assert not missing, f"add a line for these modules to docs/architecture.md: {missing}"


def _imported_packages(path: Path) -> set[str]:
    """Top-level packages a module imports (absolute imports only; relative ones stay in its package)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.partition(".")[0])
    return found


@pytest.mark.parametrize(("package", "forbidden"), [("butler", {"graph", "tasks"}), ("graph", {"tasks"})])
def test_layers_hold(package: str, forbidden: set[str]):
    offenders = {m: sorted(_imported_packages(ROOT / m) & forbidden) for m in _modules(package)}
    offenders = {m: names for m, names in offenders.items() if names}
    assert not offenders, f"{package}/ must not import {sorted(forbidden)} (docs/architecture.md, Layers): {offenders}"
