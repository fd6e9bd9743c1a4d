"""Readable text for a terminal: pass results and censuses as aligned tables. Returns strings.

Plain text on purpose, not a terminal library such as rich: the same output goes to pipes, cron
mail and CI logs, where it must stay greppable and not wrap to a terminal's width, and aligned
columns take one ten-line function here.

Every value that comes from outside (a role, database or application name, a target's name, an
error message quoting the server) goes through `printable` before it reaches the terminal.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reaper.core.census import HISTOGRAM_BOUNDS
from reaper.core.result import Outcome

if TYPE_CHECKING:
    from collections.abc import Sequence

    from reaper.core.census import Census
    from reaper.core.result import PassResult, SessionRecord


def _escape(code: int) -> str:
    named = {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}
    if code in named:
        return named[code]
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


# What a name must not send to a terminal raw: C0 controls (a newline forges a line, ESC starts
# a sequence that clears the screen or, as OSC 8, hides a link), DEL, C1 controls (0x9b is a
# one-byte CSI), the Unicode line and paragraph separators, and the bidirectional controls
# that reorder what is shown. Role and database names may hold any of them: PostgreSQL keeps
# names as created.
_ESCAPES = {
    code: _escape(code)
    for code in (
        *range(0x00, 0x20),
        *range(0x7F, 0xA0),
        0x061C,
        0x200E,
        0x200F,
        0x2028,
        0x2029,
        *range(0x202A, 0x202F),
        *range(0x2066, 0x206A),
    )
}


def printable(value: object) -> str:
    """`str(value)` with every control character shown as its escape (`\\n`, `\\x1b`, `\\u202e`),
    so that nothing in it acts on the terminal. A backslash is left as it is: PostgreSQL 16 and
    later show non-ASCII bytes of application_name as `\\xNN` text, which must read the same
    here as in pg_stat_activity."""
    return str(value).translate(_ESCAPES)


# Spared sessions with these reasons are the noise of every server; the table leaves them out
# unless asked (they still count in "examined" and appear in --json).
_QUIET_REASONS = frozenset({"own_backend", "not_client_backend", "no_rule_matches"})


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A left-aligned text table with a header rule; every cell made `printable`."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )
    return "\n".join(lines)


def render_pass(result: PassResult, *, verbose: bool = False) -> str:
    """The pass as a headline, a table of sessions and the counts."""
    if result.skipped:
        return (
            f"{printable(result.target)}: skipped, another pass of the reaper is running on "
            "this database (advisory lock held); nothing was examined."
        )
    mode = "dry run" if result.dry_run else "pass"
    lines = [f"{printable(result.target)}: {mode} in {result.duration_seconds:.3f}s"]
    if result.connections is not None:
        c = result.connections
        lines.append(
            f"connections: {c.client_connections} clients of {c.usable_connections} usable "
            f"(max_connections {c.max_connections}, "
            f"{c.superuser_reserved_connections + c.reserved_connections} reserved); "
            f"utilization {c.utilization_before:.0%} -> {c.utilization_after:.0%}; "
            f"pressure gate {'open' if result.gate_open else 'closed'}"
        )
    shown = [
        r
        for r in result.sessions
        if verbose or r.outcome is not Outcome.SPARED or r.reason.value not in _QUIET_REASONS
    ]
    if shown:
        lines.append("")
        lines.append(
            table(
                (
                    "pid",
                    "application",
                    "user",
                    "database",
                    "state",
                    "idle",
                    "rule",
                    "threshold",
                    "decision",
                ),
                [
                    (
                        r.pid,
                        r.application_name,
                        r.user,
                        r.database,
                        r.state,
                        age(r.idle_seconds),
                        r.rule,
                        _threshold(r),
                        r.outcome.value
                        if r.outcome is not Outcome.SPARED
                        else f"spared: {r.reason.value}",
                    )
                    for r in shown
                ],
            )
        )
    n = result.counts
    if result.dry_run:
        acted = f"would terminate {n.would_terminate}, would refuse {n.would_refuse}"
    else:
        acted = f"terminated {n.terminated}, refused {n.refused}"
    if result.stopped_before_terminating is not None:
        acted += (
            f", stopped {n.stopped}, unconfirmed {n.unconfirmed}, would refuse {n.would_refuse}"
        )
    lines.append("")
    lines.append(
        f"examined {n.examined}, matched {n.matched}, planned {n.planned}, {acted}"
        f", vanished {n.vanished}, changed {n.changed}, "
        f"over cap {n.skipped_by_cap}, over target {n.skipped_by_target}, "
        f"kept as newest {n.kept_as_newest}, gate closed {n.gate_closed}"
    )
    if result.stopped_before_terminating is not None:
        lines.append(f"stopped before terminating: {result.stopped_before_terminating}")
    return "\n".join(lines)


def render_census(census: Census, target: str) -> str:
    """Groups of client connections and an idle-age histogram per application."""
    lines = [
        f"{printable(target)}: {census.client_connections} client connections of "
        f"{census.usable_connections} usable (max_connections {census.max_connections}), "
        f"utilization {census.utilization:.0%}; {census.other_backends} other backends",
        "",
        table(
            ("application", "user", "database", "state", "count", "oldest idle"),
            [
                (
                    g.application_name or "(none)",
                    g.user,
                    g.database,
                    g.state,
                    g.count,
                    age(g.oldest_idle_seconds),
                )
                for g in census.groups
            ],
        ),
    ]
    if census.idle_histogram:
        labels = [label for label, _ in HISTOGRAM_BOUNDS]
        lines += [
            "",
            "idle sessions by age",
            table(
                ("application", *labels),
                [
                    (app or "(none)", *(buckets[label] for label in labels))
                    for app, buckets in census.idle_histogram.items()
                ],
            ),
        ]
    return "\n".join(lines)


def _threshold(record: SessionRecord) -> str:
    """The threshold the session was held to and where it came from: "15.0m static",
    "2.1m learned"; a learning rule's static one says why ("static, 3 of 20 periods")."""
    if record.threshold_seconds is None:
        return ""
    text = f"{age(record.threshold_seconds)} {record.threshold_source}"
    learned = record.learned
    if learned is not None and learned.seconds is None:
        text += f", {learned.observations} of {learned.min_observations} periods"
    return text


def age(seconds: float | None) -> str:
    """Seconds as a short duration: "42.0s", "15.0m", "2.5h"; "" for None."""
    if seconds is None:
        return ""
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def _cell(value: object) -> str:
    return "" if value is None else printable(value)
