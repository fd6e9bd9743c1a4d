"""Reading a policy document from a file: `reaper run --policy` and REAPER_POLICY_FILE."""

from __future__ import annotations

from typing import TYPE_CHECKING

from reaper.actions.files import read_text
from reaper.core.policy import parse_policy
from reaper.errors import PolicyError

if TYPE_CHECKING:
    from pathlib import Path

    from reaper.core.policy import Policy


def policy_source_name(path: Path) -> str:
    """How results, logs and errors name a policy read from `path`."""
    return f"policy file {path}"


def read_policy_file(path: Path) -> Policy:
    """The validated policy in `path`.

    Raises:
        PolicyError: the file cannot be read, is not UTF-8 text, is not JSON or is invalid;
            the message names the file (and each bad field).
    """
    source = policy_source_name(path)
    text = read_text(path, described_as=source, error=PolicyError)
    return parse_policy(text, source=source)
