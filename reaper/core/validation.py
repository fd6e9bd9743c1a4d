"""Helpers every validated input shares: the policy, the Lambda's events and its settings.

One way to turn a pydantic ValidationError into a readable line, and one "names must be
unique" check, so that every input reports a bad field the same way.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterable

    from pydantic import ValidationError


def describe_validation_error(
    exc: ValidationError,
    *,
    field_label: Callable[[str], str] = str,
    hidden_fields: Collection[str] = (),
) -> str:
    """One readable clause per problem: the field's path, what is wrong, and the value given.

    Args:
        exc: the pydantic error.
        field_label: how to name a top-level field (settings name the environment variable).
        hidden_fields: top-level fields whose input may hold a password: their value is never
            repeated.
    """
    problems = []
    for error in exc.errors(include_url=False):
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "json_invalid":
            problems.append(f"not valid JSON ({error['ctx'].get('error', message)})")
            continue
        location = error["loc"]
        if not location:
            problems.append(message)
            continue
        shown = error["type"] != "missing" and str(location[0]) not in hidden_fields
        value = f" (got {_short_repr(error['input'])})" if shown else ""
        problems.append(f"{_path(location, field_label)}: {message}{value}")
    return "; ".join(problems)


def require_unique_names(names: Iterable[str], *, what: str) -> None:
    """Raise ValueError (inside a validator: a validation error) naming each repeated name.

    Args:
        names: the names, in order.
        what: what they name ("rule", "target"), for the message.
    """
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)
    if repeated:
        raise ValueError(f"{what} names must be unique; repeated: {', '.join(repeated)}")


def _path(location: tuple[int | str, ...], field_label: Callable[[str], str]) -> str:
    text = ""
    for part in location:
        if part == "[key]":  # pydantic's marker for an invalid dict key: the key itself precedes
            continue
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else field_label(part)
    return text


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
