"""SQL shown to a person: a role name from the server is quoted as PostgreSQL reads it."""

from __future__ import annotations

import dataclasses

import pytest

from reaper.core.checks import setup_checks
from reaper.core.full_database import FullCause, full_database_fix
from reaper.core.sql_text import quote_ident
from tests.unit.test_checks import COMPLETE_18


@pytest.mark.parametrize(
    ("name", "quoted"),
    [
        ("idle_reaper", "idle_reaper"),
        ("reaper$2", "reaper$2"),
        ("Reaper", '"Reaper"'),
        ("2fast", '"2fast"'),
        ("user", '"user"'),
        ('x"; DROP ROLE admin; --', '"x""; DROP ROLE admin; --"'),
        ("a b", '"a b"'),
    ],
)
def test_a_name_is_bare_only_when_postgresql_reads_it_so(name: str, quoted: str) -> None:
    assert quote_ident(name) == quoted


def test_every_fix_the_doctor_prints_quotes_a_hostile_role_name() -> None:
    hostile = 'x"; DROP ROLE admin; --'
    facts = dataclasses.replace(
        COMPLETE_18,
        role=hostile,
        sees_all_sessions=False,
        may_signal_others=False,
        may_use_reserved_connections=False,
        role_statement_timeout=None,
        role_connection_limit=-1,
    )
    fixes = [check.fix for check in setup_checks(facts) if check.fix and "DROP ROLE" in check.fix]
    assert len(fixes) >= 4, "the hostile role should appear in the grant and role fixes"
    for fix in fixes:
        assert '"x""; DROP ROLE admin; --"' in fix
        assert f"TO {hostile}" not in fix
        assert f"ROLE {hostile}" not in fix


def test_the_full_database_fix_quotes_the_role_as_a_name_and_as_a_literal() -> None:
    fix = full_database_fix(FullCause.ROLE, "o'brien")
    assert 'ALTER ROLE "o\'brien" CONNECTION LIMIT 3' in fix
    assert "usename = 'o''brien'" in fix
