"""The error tree drawn in reaper/errors.py and the README's exit codes match the classes."""

from __future__ import annotations

import re
from pathlib import Path

from reaper import errors
from reaper.errors import ExitCode, ReaperError

README = Path(__file__).resolve().parents[2] / "README.md"
# "    │   └── AuthenticationError    3": the name's column gives its depth in the tree.
_TREE_LINE = re.compile(r"^(?P<prefix>[\s│├└─]*)(?P<name>[A-Z]\w*Error)\s+(?P<code>\d+)\b")


def _drawn_tree() -> dict[str, tuple[str | None, int]]:
    """Each class drawn in the docstring: its parent in the drawing and its exit code."""
    assert errors.__doc__ is not None
    drawn: dict[str, tuple[str | None, int]] = {}
    parents: dict[int, str] = {}
    for line in errors.__doc__.splitlines():
        match = _TREE_LINE.match(line)
        if match is None:
            continue
        column = len(match["prefix"])
        parents[column] = match["name"]
        parent = max((c for c in parents if c < column), default=None)
        drawn[match["name"]] = (None if parent is None else parents[parent], int(match["code"]))
    return drawn


def test_every_error_class_is_drawn_under_its_base_with_its_exit_code() -> None:
    drawn = _drawn_tree()
    classes = {
        name: cls
        for name, cls in vars(errors).items()
        if isinstance(cls, type) and issubclass(cls, ReaperError)
    }
    assert set(drawn) == set(classes)
    for name, (parent, code) in drawn.items():
        cls = classes[name]
        assert cls.exit_code == code, name
        if parent is not None:
            assert cls.__bases__ == (classes[parent],), name


def test_the_readme_lists_every_exit_code() -> None:
    table = re.findall(r"^\| (\d+) \|", README.read_text(encoding="utf-8"), flags=re.MULTILINE)
    assert sorted(int(code) for code in table) == sorted(ExitCode)
