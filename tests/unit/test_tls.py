"""Which servers are local, and the TLS a DSN gets when it names no sslmode: no server needed."""

from __future__ import annotations

import pytest

from reaper.core.tls import all_hosts_local, is_local_host
from reaper.pg.conninfo import ConnInfo
from reaper.pg.tls import RDS_CA_BUNDLE

# libpq's variables that stand in for DSN keywords.
LIBPQ_VARIABLES = ("PGHOST", "PGHOSTADDR", "PGSSLMODE", "PGSSLROOTCERT")
VERIFIED = {"sslmode": "verify-full", "sslrootcert": str(RDS_CA_BUNDLE)}


@pytest.fixture(autouse=True)
def no_libpq_variables(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in LIBPQ_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    ("host", "local"),
    [
        ("", True),
        ("/var/run/postgresql", True),
        ("@abstract-socket", True),
        ("localhost", True),
        ("LOCALHOST.", True),
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("10.0.3.7", False),
        ("192.168.1.20", False),
        ("::ffff:10.0.0.1", False),
        ("db.internal", False),
        ("localhost.example.com", False),
        ("orders.abc.eu-west-1.rds.amazonaws.com", False),
    ],
)
def test_only_sockets_localhost_and_loopback_addresses_are_local(host, local) -> None:
    assert is_local_host(host) is local


def test_a_host_list_is_local_only_when_every_host_is() -> None:
    assert all_hosts_local("localhost,127.0.0.1")
    assert not all_hosts_local("127.0.0.1,db.internal")


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://reaper@db.internal/postgres",
        "host=orders.abc.eu-west-1.rds.amazonaws.com user=reaper",
        "host=10.0.3.7 dbname=postgres",
        "hostaddr=10.0.3.7 dbname=postgres",
        "host=127.0.0.1,db.internal user=reaper",
        # The host is what the certificate must name, even when hostaddr is a local tunnel.
        "host=db.internal hostaddr=127.0.0.1 user=reaper",
    ],
)
def test_a_dsn_without_sslmode_to_a_remote_server_verifies_it_with_the_rds_bundle(dsn) -> None:
    params = ConnInfo.from_dsn(dsn).params
    assert {key: params[key] for key in VERIFIED} == VERIFIED


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://reaper@127.0.0.1:5432/postgres",
        "postgresql://reaper@localhost/postgres",
        "postgresql:///postgres?host=/var/run/postgresql",
        "dbname=postgres user=reaper",
        "host=::1 user=reaper",
    ],
)
def test_a_dsn_to_a_local_server_keeps_libpqs_default(dsn) -> None:
    target = ConnInfo.from_dsn(dsn)
    assert "sslmode" not in target.params
    assert "sslrootcert" not in target.params
    assert target.sslmode == "prefer"
    assert not target.unverified_remote


@pytest.mark.parametrize("sslmode", ["disable", "prefer", "require", "verify-ca"])
def test_a_dsn_that_names_its_sslmode_keeps_it_and_is_flagged_unless_it_verifies(sslmode) -> None:
    target = ConnInfo.from_dsn(f"postgresql://reaper@db.internal/postgres?sslmode={sslmode}")
    assert target.params["sslmode"] == sslmode
    assert "sslrootcert" not in target.params
    assert target.unverified_remote is (sslmode != "verify-ca")


def test_a_dsns_own_ca_is_kept_when_the_sslmode_is_filled_in() -> None:
    target = ConnInfo.from_dsn("host=db.internal sslrootcert=/etc/ssl/our-ca.pem")
    assert target.params["sslmode"] == "verify-full"
    assert target.params["sslrootcert"] == "/etc/ssl/our-ca.pem"


def test_libpq_variables_count_as_part_of_the_dsn(no_libpq_variables) -> None:
    # PGHOST names a remote server the DSN leaves out: verified by default.
    no_libpq_variables.setenv("PGHOST", "db.internal")
    assert ConnInfo.from_dsn("user=reaper").params["sslmode"] == "verify-full"
    # PGSSLROOTCERT is the CA then, and PGSSLMODE an sslmode the reaper leaves alone.
    no_libpq_variables.setenv("PGSSLROOTCERT", "/etc/ssl/our-ca.pem")
    assert "sslrootcert" not in ConnInfo.from_dsn("user=reaper").params
    no_libpq_variables.setenv("PGSSLMODE", "require")
    target = ConnInfo.from_dsn("user=reaper")
    assert "sslmode" not in target.params
    assert target.sslmode == "require"
    assert target.unverified_remote


def test_overrides_are_judged_with_the_dsn() -> None:
    # A local base DSN whose target overrides the host with a remote one.
    target = ConnInfo.from_dsn(
        "postgresql://reaper@127.0.0.1/postgres", overrides={"host": "db.internal"}
    )
    assert target.params["host"] == "db.internal"
    assert target.params["sslmode"] == "verify-full"
