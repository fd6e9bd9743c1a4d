"""Reading a user's file (a policy document, a Lambda event) with an error that names it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from reaper.errors import ReaperError


def read_text(path: Path, *, described_as: str, error: type[ReaperError]) -> str:
    """The UTF-8 text of `path`.

    Args:
        path: the file.
        described_as: how messages name the file ("policy file p.json").
        error: the error class to raise (PolicyError, EventError, ...).

    Raises:
        ReaperError: of class `error`, when the file cannot be read or is not UTF-8 text.
    """
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"cannot read {described_as}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise error(f"{described_as} is not UTF-8 text") from exc
