"""What the command line prints for people: every outside value made printable."""

from __future__ import annotations

import pytest

from reaper.cli.doctor import render_report
from reaper.cli.render import printable, table
from reaper.cli.targets import render_targets
from reaper.core.checks import Check, DoctorReport, Status

OSC8_LINK = "\x1b]8;;http://e.x/\x07click\x1b]8;;\x07"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain lambda:orders", "plain lambda:orders"),
        ("two\nlines\r\tand a tab", "two\\nlines\\r\\tand a tab"),
        ("\x1b[2Jcleared", "\\x1b[2Jcleared"),
        (OSC8_LINK, "\\x1b]8;;http://e.x/\\x07click\\x1b]8;;\\x07"),
        ("\x00nul \x7fdel \x9bcsi \x85nel", "\\x00nul \\x7fdel \\x9bcsi \\x85nel"),
        ("\u202eevil\u2066 \u2028", "\\u202eevil\\u2066 \\u2028"),
        ("données café 数据", "données café 数据"),
        ("lambda:caf\\xc3\\xa9", "lambda:caf\\xc3\\xa9"),
    ],
)
def test_control_characters_are_shown_as_escapes_and_the_rest_as_it_is(text, shown) -> None:
    assert printable(text) == shown


def test_a_table_cell_cannot_add_a_line_or_shift_the_columns() -> None:
    rendered = table(("user", "n"), [("evil\nforged  1", 1), ("app", 2)]).splitlines()
    # the header, its rule and one line per row; the second column lines up in every one
    assert len(rendered) == 4
    assert rendered[2] == "evil\\nforged  1  1"
    assert {line.rstrip()[-1:] for line in rendered} == {"n", "-", "1", "2"}
    assert len({len(line) for line in rendered}) == 1


def test_doctor_lines_and_targets_escape_what_they_quote() -> None:
    hostile = "r\x1b[2J\nforged"
    report = DoctorReport(
        f"{hostile}@db:5432/app",
        (
            Check(
                "least privilege", Status.WARN, f"{hostile} is a superuser", f"GRANT x TO {hostile}"
            ),
        ),
    )
    document = {
        "discovery": {"tag": f"idle-reaper={OSC8_LINK}", "vpc_id": None},
        "stack_policy": "built-in default policy",
        "targets": [
            {
                "name": "db1",
                "origin": "discovered",
                "action": "skip",
                "reason": f"status is {hostile!s}",
                "host": f"h{OSC8_LINK}",
                "port": 5432,
                "login": None,
                "policy": None,
            }
        ],
    }
    for output in (render_report(report), render_targets(document)):
        assert "\x1b" not in output
        assert "\x07" not in output
        assert not any(line.startswith("forged") for line in output.splitlines())
        assert "\\x1b" in output
