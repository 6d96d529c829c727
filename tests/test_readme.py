"""The README's examples run as written: each fenced block after a ``<!-- readme-example: NAME -->`` line is executed,
and the ``test_*`` functions it defines are called."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
_EXAMPLE = re.compile(r"<!-- readme-example: (?P<name>[\w-]+) -->\n```python\n(?P<code>.*?)\n```", re.DOTALL)


def _examples() -> dict[str, str]:
    return {m["name"]: m["code"] for m in _EXAMPLE.finditer(README.read_text())}


def test_readme_has_its_examples():
    assert "own-task" in _examples()


@pytest.mark.parametrize("name", sorted(_examples()))
def test_readme_example_runs(name: str, tmp_path: Path):
    namespace: dict = {"__name__": f"readme_{name.replace('-', '_')}"}
    exec(compile(_examples()[name], f"README.md#{name}", "exec"), namespace)
    tests = [value for key, value in namespace.items() if key.startswith("test_") and callable(value)]
    assert tests, f"the README example {name!r} defines no test_* function"
    for test in tests:
        test(tmp_path / test.__name__)
