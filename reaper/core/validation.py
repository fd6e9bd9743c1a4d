"""Helpers every validated input shares: the policy, the Lambda's events and its settings.

One way to read a JSON document (`parse_json`: duplicate keys refused), one way to turn a
pydantic ValidationError into a readable line, and one "names must be unique" check, so that
every input reports a bad field the same way.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterable

    from pydantic import ValidationError
    from pydantic_core import ErrorDetails

# How much of one validation error a message repeats: enough to find every problem of a
# hand-written document, bounded so that a hostile input (200,000 unknown keys) still gives
# one short log line.
MAX_PROBLEMS = 10
MAX_NAME_CHARS = 40
MAX_VALUE_CHARS = 80
MAX_MESSAGE_CHARS = 2_000


class JsonDocumentError(ValueError):
    """A text that is not one unambiguous JSON document; the message never repeats a value."""


class _DuplicateKeys(dict[str, Any]):
    """An object in which a key appeared more than once (found after decoding, to name its
    path, which the decoder's hook does not know)."""

    def __init__(self, pairs: list[tuple[str, Any]], duplicated: str) -> None:
        super().__init__(pairs)
        self.duplicated = duplicated


def parse_json(text: str | bytes, *, max_bytes: int | None = None) -> Any:
    """Decode one JSON document, refusing what other readers could read differently.

    Python's json module, like pydantic's parser and most others, keeps the last of two equal
    keys, so `{"dry_run": true, "dry_run": false}` looks like a dry run to a reviewer and runs
    a live pass. NaN and Infinity are not JSON either, and other tools refuse them.

    Args:
        text: the document (bytes must be UTF-8).
        max_bytes: refuse a longer document, before decoding it.

    Raises:
        JsonDocumentError: naming the duplicated key and its path, the position of a syntax
            error, or the limit exceeded; never a value of the document (it may hold a secret).
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise JsonDocumentError("not UTF-8 text") from None
    if max_bytes is not None:
        size = len(text.encode("utf-8", errors="surrogatepass"))
        if size > max_bytes:
            raise JsonDocumentError(
                f"the document is {size:,} bytes, over the limit of {max_bytes:,} bytes"
            )
    duplicates: list[str] = []

    def object_of_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for key, _value in pairs:
            if key in seen:
                duplicates.append(key)
                return _DuplicateKeys(pairs, key)
            seen.add(key)
        return dict(pairs)

    try:
        document = json.loads(
            text, object_pairs_hook=object_of_pairs, parse_constant=_refuse_constant
        )
    except json.JSONDecodeError as exc:
        # exc.msg and the position only: str(exc) is the same, the document is not in it.
        raise JsonDocumentError(
            f"not valid JSON ({exc.msg}: line {exc.lineno} column {exc.colno})"
        ) from None
    except RecursionError:
        raise JsonDocumentError("not valid JSON (nested too deeply)") from None
    if duplicates:
        path, key = _first_duplicate(document)
        where = f"in {path}" if path else "at the top level"
        raise JsonDocumentError(
            f"duplicate key {short_name(key)!r} {where}: JSON readers disagree on which value "
            "counts, so give each key once"
        )
    return document


def describe_validation_error(
    exc: ValidationError,
    *,
    field_label: Callable[[str], str] = str,
    hidden_fields: Collection[str] = (),
    show_values: bool = True,
) -> str:
    """One readable clause per problem: the field's path, what is wrong, and the value given.

    At most MAX_PROBLEMS clauses, then how many more; long names and values are cut short, and
    the whole to MAX_MESSAGE_CHARS.

    Args:
        exc: the pydantic error.
        field_label: how to name a top-level field (settings name the environment variable).
        hidden_fields: top-level fields whose input may hold a password: their value is never
            repeated.
        show_values: False repeats no value at all (an input whose every field may hold one).
    """
    errors = _without_echoes(exc.errors(include_url=False))
    problems = []
    for error in errors[:MAX_PROBLEMS]:
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "json_invalid":
            problems.append(f"not valid JSON ({error['ctx'].get('error', message)})")
            continue
        location = error["loc"]
        if not location:
            problems.append(message)
            continue
        shown = show_values and error["type"] != "missing" and str(location[0]) not in hidden_fields
        value = f" (got {short_repr(error['input'])})" if shown else ""
        problems.append(f"{json_path(location, field_label)}: {message}{value}")
    if len(errors) > MAX_PROBLEMS:
        problems.append(f"and {len(errors) - MAX_PROBLEMS:,} more problem(s)")
    text = "; ".join(problems)
    # A last bound, whatever pydantic's own messages hold.
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 3] + "..."


def require_unique_names(names: Iterable[str], *, what: str) -> None:
    """Raise ValueError (inside a validator: a validation error) naming each repeated name.

    Args:
        names: the names, in order.
        what: what they name ("rule", "target"), for the message.
    """
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)
    if repeated:
        raise ValueError(f"{what} names must be unique; repeated: {', '.join(repeated)}")


def list_names(names: Iterable[str], *, most: int = MAX_PROBLEMS) -> str:
    """Names for a message: the first `most`, each cut short, then how many more."""
    names = list(names)
    shown = ", ".join(short_name(name) for name in names[:most])
    more = len(names) - most
    return f"{shown} and {more:,} more" if more > 0 else shown


def json_path(location: Iterable[int | str], field_label: Callable[[str], str] = str) -> str:
    """`rules[0].states.idle` from pydantic's location (or a JSON path's parts)."""
    text = ""
    for part in location:
        if part == "[key]":  # pydantic's marker for an invalid dict key: the key itself precedes
            continue
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            name = short_name(part)
            text += f".{name}" if text else field_label(name)
    return text


def _without_echoes(errors: list[ErrorDetails]) -> list[ErrorDetails]:
    """The errors less a list's "too short" that only repeats its refused items: pydantic
    counts the items that passed, so one bad pattern in a list of one is two problems."""
    item_locations = {error["loc"][:-1] for error in errors if error["loc"]}
    return [
        error
        for error in errors
        if not (error["type"] == "too_short" and error["loc"] in item_locations)
    ]


def _refuse_constant(name: str) -> Any:
    raise JsonDocumentError(f"not valid JSON ({name} is not a JSON number)")


def _first_duplicate(document: Any) -> tuple[str, str]:
    """The path and key of the first object, in document order, that repeats a key (the
    decoder's hook, called innermost first, cannot know where an object sits)."""
    # Iterative: a document nested thousands deep must not exhaust the stack here either.
    stack: list[tuple[tuple[int | str, ...], Any]] = [((), document)]
    while stack:
        location, value = stack.pop()
        if isinstance(value, _DuplicateKeys):
            return json_path(location), value.duplicated
        if isinstance(value, dict):
            children = [((*location, key), child) for key, child in value.items()]
        elif isinstance(value, list):
            children = [((*location, index), child) for index, child in enumerate(value)]
        else:
            continue
        stack.extend(reversed(children))
    raise AssertionError("a duplicate key was seen but is not in the document")


def short_name(name: str) -> str:
    """A name cut short for a message."""
    return name if len(name) <= MAX_NAME_CHARS else name[: MAX_NAME_CHARS - 3] + "..."


def short_repr(value: Any) -> str:
    """repr(value), cut short for a message."""
    text = repr(value)
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 3] + "..."
