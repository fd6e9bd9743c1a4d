"""ConnInfo.from_dsn: a connection string libpq would refuse only when connecting is refused at
once (bad input, exit 2), naming the parameter and never repeating a password."""

from __future__ import annotations

import pytest

from reaper.errors import ExitCode, SettingsError
from reaper.pg.conninfo import SSLMODES, ConnInfo

PASSWORD = "hunter2-7d3a"


@pytest.mark.parametrize(
    ("dsn", "named"),
    [
        pytest.param(
            f"postgresql://reaper:{PASSWORD}@db/app?foo=bar", "unknown parameter 'foo'", id="uri"
        ),
        pytest.param(
            f"host=db password={PASSWORD} foo=bar", "unknown parameter 'foo'", id="key-value"
        ),
        pytest.param(
            f"postgresql://reaper:{PASSWORD}@db/app?sslmod=require",
            "unknown parameter 'sslmod'; did you mean sslmode?",
            id="misspelt",
        ),
        pytest.param(
            f"postgresql://reaper:{PASSWORD}@db/app?sslmode=bogus",
            "sslmode must be one of disable, allow, prefer, require, verify-ca, verify-full",
            id="sslmode",
        ),
        pytest.param(
            f"postgresql://reaper:{PASSWORD}@db:99999/app",
            "port 99999 is not a number from 1 to 65535",
            id="port-out-of-range",
        ),
        pytest.param(f"host=db port=0 password={PASSWORD}", "port 0 is not", id="port-zero"),
        pytest.param(
            f"postgresql://reaper@db:{PASSWORD}/app",
            "port is not a number from 1 to 65535",
            id="password-in-the-ports-place",
        ),
        pytest.param(
            f"host=a,b port=5432,{PASSWORD} password=x", "port is not a number", id="second-port"
        ),
        pytest.param(
            f"host=db password {PASSWORD}", "not a valid PostgreSQL connection string", id="syntax"
        ),
    ],
)
def test_a_connection_string_libpq_would_refuse_is_bad_input_naming_the_parameter(
    dsn, named
) -> None:
    with pytest.raises(SettingsError) as refused:
        ConnInfo.from_dsn(dsn)
    assert named in str(refused.value)
    assert PASSWORD not in str(refused.value)
    assert refused.value.exit_code is ExitCode.BAD_INPUT


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://reaper@db:5432/app?sslmode=verify-full",
        "host=a,b port=5432,5433 dbname=app",
        "host=a,b port=,5433",
        "postgresql:///app?host=/var/run/postgresql",
        *(f"host=db sslmode={mode}" for mode in SSLMODES),
    ],
)
def test_valid_connection_strings_are_taken(dsn) -> None:
    assert ConnInfo.from_dsn(dsn).params
