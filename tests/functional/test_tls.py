"""Verified TLS against real PostgreSQL servers that present certificates, made here with openssl.

Two servers on 127.0.0.1, each with `log_connections = on` so that its log shows what reached
it: an impostor, whose certificate is self-signed (though it names the right address) and which
asks every login for its password in cleartext, as a server posing as the database would; and a
trusted one, whose certificate a test CA signed. Both certificates also name REMOTE_NAME, a
host name that is not local, reached at 127.0.0.1 through libpq's hostaddr: a DSN judged
remote without traffic leaving the machine.

Under the defaults, secret, IAM and discovered logins give the impostor nothing: the TLS
handshake fails before the startup packet, so its log never shows even the user name.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from reaper.aws.handler import lambda_handler
from reaper.cli.invoke import local_context
from reaper.cli.main import main
from reaper.errors import ExitCode, LocalPostgresError, TargetsFailedError
from reaper.pg.tls import RDS_CA_BUNDLE
from tests.fix_aws import REGION, SECRET_NAME, RdsSecret, log_records, rds_secret_document
from tests.fix_db import cluster_server, wait_until
from tests.functional.fleet.servers import TAG, Rds, own_tags, visit
from tests.functional.reaping import policy_document, wait_past_threshold
from tests.harness.tls import CertificateMaker, start_tls_server

if TYPE_CHECKING:
    from collections.abc import Iterator

    from reaper.local.cluster import LocalPostgres
    from tests.fix_db import PgServer
    from tests.functional.fleet.servers import FleetServer

pytestmark = pytest.mark.pg

EVENTS = Path(__file__).resolve().parents[2] / "events"
SCHEDULED_EVENT = json.loads((EVENTS / "scheduled.json").read_text())
DOCTOR_EVENT = json.loads((EVENTS / "doctor.json").read_text())
REMOTE_NAME = "orders.db.example.test"
THRESHOLD = 1.0
# The server's words for a handshake the client gave up on (an unknown CA, a name mismatch).
REFUSED_HANDSHAKE = "could not accept SSL connection"

Login = Callable[["FleetServer"], None]


@dataclass
class TlsServer:
    """A throwaway server presenting a certificate, and what its log says."""

    cluster: LocalPostgres
    server: PgServer

    def log_size(self) -> int:
        return self.cluster.log_file.stat().st_size

    def log_since(self, offset: int) -> str:
        with self.cluster.log_file.open(encoding="utf-8", errors="replace") as log:
            log.seek(offset)
            return log.read()

    def log_once(self, offset: int, words: str) -> str:
        """The log since `offset` once it holds `words` (a backend logs as it exits)."""
        return wait_until(
            lambda: text if words in (text := self.log_since(offset)) else "",
            message=f"{words!r} in the server log",
        )


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> CertificateMaker:
    return CertificateMaker(tmp_path_factory.mktemp("certificates"))


@contextlib.contextmanager
def _tls_server(certificate: Any, label: str) -> Iterator[TlsServer]:
    try:
        cluster = start_tls_server(
            certificate, settings={"log_connections": "on", "max_connections": 50}
        )
    except LocalPostgresError as exc:
        pytest.skip(str(exc))
    try:
        yield TlsServer(cluster, cluster_server(cluster, f"{label} {cluster.binaries.label}"))
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def impostor(certificates: CertificateMaker) -> Iterator[TlsServer]:
    """Self-signed, naming 127.0.0.1 and REMOTE_NAME; asks every TCP login for a cleartext
    password, which is what it wants to collect."""
    with _tls_server(
        certificates.self_signed("impostor", ["127.0.0.1", REMOTE_NAME]), "impostor"
    ) as tls:
        hba = tls.cluster.data_dir / "pg_hba.conf"
        hba.write_text("host all all 127.0.0.1/32 password\n" + hba.read_text())
        with psycopg.connect(tls.server.admin_dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_reload_conf()")
        yield tls


@pytest.fixture(scope="module")
def trusted(certificates: CertificateMaker) -> Iterator[TlsServer]:
    """Signed by the test CA, naming 127.0.0.1 and REMOTE_NAME."""
    with _tls_server(
        certificates.signed_by_ca("trusted", ["127.0.0.1", REMOTE_NAME]), "trusted"
    ) as tls:
        yield tls


@pytest.fixture
def on_impostor(impostor: TlsServer) -> Iterator[FleetServer]:
    with contextlib.ExitStack() as stack:
        yield visit(stack, impostor.server)


@pytest.fixture
def on_trusted(trusted: TlsServer) -> Iterator[FleetServer]:
    with contextlib.ExitStack() as stack:
        yield visit(stack, trusted.server)


# -- the function's logins, with the stack's default TLS settings ---------------------------


@pytest.fixture
def policy_file(function_env: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[str], None]:
    """REAPER_POLICY_FILE: reap application `name` idle past THRESHOLD."""

    def write(name: str) -> None:
        path = tmp_path / "policy.json"
        path.write_text(policy_document([name], THRESHOLD))
        function_env.setenv("REAPER_POLICY_FILE", str(path))

    return write


@pytest.fixture
def secret_login(
    secrets_client: Any, function_env: pytest.MonkeyPatch, policy_file: Callable[[str], None]
) -> Login:
    """The reaper's login in the stack's Secrets Manager secret; the policy reaps "orders"."""
    # Not the rds_secret fixture: it sets REAPER_SSLMODE=prefer for the servers without TLS.
    function_env.setenv("REAPER_SECRET_ID", SECRET_NAME)
    secret = RdsSecret(secrets_client, SECRET_NAME)

    def log_in(member: FleetServer) -> None:
        policy_file(member.sessions.app("orders"))
        secret.put(rds_secret_document(member.server, member.reaper))

    return log_in


@pytest.fixture
def iam_login(
    aws: None, function_env: pytest.MonkeyPatch, policy_file: Callable[[str], None]
) -> Login:
    """The stack's IAM authentication: a token moto's credentials sign, for the reaper's role."""

    def log_in(member: FleetServer) -> None:
        policy_file(member.sessions.app("orders"))
        for name, value in {
            "REAPER_IAM_AUTH": "true",
            "REAPER_DB_HOST": member.server.host,
            "REAPER_DB_PORT": str(member.server.port),
            "REAPER_DB_USER": member.reaper.name,
        }.items():
            function_env.setenv(name, value)

    return log_in


@pytest.fixture
def discovered_login(
    aws: None,
    secrets_client: Any,
    function_env: pytest.MonkeyPatch,
    policy_file: Callable[[str], None],
) -> Login:
    """An RDS instance found by its tag, at the server, logging in with the secret its tag names."""
    import boto3

    function_env.setenv("REAPER_DISCOVERY_TAG", f"{TAG['Key']}={TAG['Value']}")
    rds = Rds(boto3.client("rds", region_name=REGION), function_env)

    def log_in(member: FleetServer) -> None:
        policy_file(member.sessions.app("orders"))
        document = rds_secret_document(member.server, member.reaper)
        secret = secrets_client.create_secret(Name="orders/db", SecretString=json.dumps(document))
        rds.instance("orders-db", server=member.server, tags=own_tags(secret_arn=secret["ARN"]))

    return log_in


@pytest.fixture(params=["secret", "iam", "discovered"])
def login(request: pytest.FixtureRequest) -> Login:
    login: Login = request.getfixturevalue(f"{request.param}_login")
    return login


@pytest.fixture
def unverified(function_env: pytest.MonkeyPatch) -> None:
    """REAPER_SSLMODE=require, the former default: TLS, and any certificate accepted."""
    function_env.setenv("REAPER_SSLMODE", "require")


@pytest.fixture
def test_ca_trusted(function_env: pytest.MonkeyPatch, certificates: CertificateMaker) -> None:
    """REAPER_SSLROOTCERT: the test CA."""
    function_env.setenv("REAPER_SSLROOTCERT", str(certificates.ca.cert))


def invoke(event: dict[str, Any] = SCHEDULED_EVENT) -> dict[str, Any]:
    return lambda_handler(event, local_context())


def failing_pass(
    server: TlsServer, capsys: pytest.CaptureFixture[str], *, logged: str
) -> tuple[dict[str, Any], str]:
    """Run a pass that must fail on its one target: the target's error line, and what the
    server logged during the pass (once it has logged `logged`)."""
    offset = server.log_size()
    with pytest.raises(TargetsFailedError):
        invoke()
    output = capsys.readouterr().out
    (line,) = [r for r in log_records(output) if r.get("audit") == "target_error"]
    return line, server.log_once(offset, logged)


def assert_one_connection_let_in_by_no_one(log: str) -> None:
    """The server's log of a pass: one connection came, and no login was authorized."""
    assert log.count("connection received") == 1
    assert "authorized" not in log


# -- an impostor on the path ----------------------------------------------------------------


def test_a_server_with_a_self_signed_certificate_receives_no_credential_by_default(
    impostor, on_impostor, login, capsys
) -> None:
    # given the stack's default TLS settings and a login to a server whose certificate is
    # self-signed, though it names the address the reaper connects to
    login(on_impostor)

    # when a pass runs, then its target fails on the certificate, once: no retry
    error, log = failing_pass(impostor, capsys, logged=REFUSED_HANDSHAKE)
    assert error["error_type"] == "TargetUnreachableError"
    assert "certificate verify failed" in error["error"]
    assert f"sslrootcert={RDS_CA_BUNDLE}" in error["error"]
    assert "sent no credential" in error["error"]

    # and the server saw one handshake refused, and never the login: not the user name, so
    # neither the password nor the token that would have followed it
    assert_one_connection_let_in_by_no_one(log)
    assert on_impostor.reaper.name not in log
    assert "authenticat" not in log


@pytest.mark.usefixtures("unverified")
def test_require_still_never_answers_a_cleartext_request_with_a_secrets_password(
    impostor, on_impostor, secret_login, capsys
) -> None:
    # given REAPER_SSLMODE=require, the former default: TLS, any certificate accepted
    secret_login(on_impostor)

    # when a pass runs against the impostor, which asks for the password in cleartext
    error, log = failing_pass(impostor, capsys, logged="connection received")

    # then libpq refused to answer (require_auth=!password), and did not try again
    assert error["error_type"] == "TargetUnreachableError"
    assert 'authentication method requirement "!password" failed' in error["error"]
    assert "server requested a cleartext password" in error["error"]
    # and the server received no password: it checked none, and let no one in
    assert_one_connection_let_in_by_no_one(log)
    assert "password authentication failed" not in log


@pytest.mark.usefixtures("unverified")
def test_require_hands_an_iam_token_to_any_server_that_asks_for_it(
    impostor, on_impostor, iam_login, capsys
) -> None:
    # given IAM authentication with REAPER_SSLMODE=require: RDS IAM asks for the token in
    # cleartext, so require_auth=password answers whoever asks that way
    iam_login(on_impostor)

    # when a pass runs against the impostor
    error, log = failing_pass(impostor, capsys, logged="password authentication failed")

    # then the impostor received the token and checked it as a password: why verify-full is
    # the default, and require a choice made by name
    assert error["error_type"] == "AuthenticationError"
    assert f'password authentication failed for user "{on_impostor.reaper.name}"' in log


# -- a server whose CA is given -------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.usefixtures("test_ca_trusted")
def test_a_server_signed_by_the_ca_in_reaper_sslrootcert_is_verified_and_reaped(
    trusted, on_trusted, secret_login
) -> None:
    # given a secret login and the test CA as REAPER_SSLROOTCERT, and a stale session
    secret_login(on_trusted)
    stale = on_trusted.open("orders")
    wait_past_threshold(THRESHOLD)
    offset = trusted.log_size()

    # when a pass runs
    summary = invoke()

    # then it verified the server, logged in over TLS and reaped the session
    assert summary["targets"][0]["status"] == "ok"
    assert on_trusted.ended(stale)
    log = trusted.log_once(offset, f"connection authorized: user={on_trusted.reaper.name}")
    authorized = [line for line in log.splitlines() if on_trusted.reaper.name in line]
    assert all("SSL enabled" in line for line in authorized if "authorized" in line)
    # and the doctor says so
    checks = {check["name"]: check for check in invoke(DOCTOR_EVENT)["targets"][0]["checks"]}
    assert checks["connection"]["status"] == "ok"
    assert "certificate verified (sslmode=verify-full)" in checks["connection"]["summary"]


# -- DSNs on the command line ---------------------------------------------------------------


def remote_dsn(member: FleetServer, **options: str) -> str:
    """A DSN naming REMOTE_NAME, a host off this machine, reached at 127.0.0.1 (hostaddr)."""
    return make_conninfo(
        host=REMOTE_NAME,
        hostaddr="127.0.0.1",
        port=member.server.port,
        user=member.reaper.name,
        password=member.reaper.password,
        dbname="postgres",
        **options,
    )


def doctor(dsn: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    exit_code = main(["doctor", "--dsn", dsn, "--json"])
    report = json.loads(capsys.readouterr().out)
    return exit_code, {check["name"]: check for check in report["checks"]}


def test_a_dsn_without_sslmode_to_a_remote_host_is_verified_against_the_rds_bundle(
    on_trusted, capsys
) -> None:
    # given a DSN that names no sslmode, to a remote host whose certificate RDS did not sign
    # when the census is asked for, then the login is refused: nothing fell back to plaintext
    exit_code = main(["report", "--dsn", remote_dsn(on_trusted)])
    err = capsys.readouterr().err
    assert exit_code == ExitCode.UNREACHABLE
    assert "certificate verify failed" in err
    assert f"sslmode=verify-full, sslrootcert={RDS_CA_BUNDLE}" in err
    assert on_trusted.reaper.password not in err


def test_a_dsn_naming_its_ca_is_verified_with_it(on_trusted, certificates, capsys) -> None:
    # given a DSN to a remote host that names the CA, not the sslmode
    dsn = remote_dsn(on_trusted, sslrootcert=str(certificates.ca.cert))

    # when the doctor checks it, then the connection is verified
    exit_code, checks = doctor(dsn, capsys)
    assert exit_code == ExitCode.OK
    assert checks["connection"]["status"] == "ok"
    assert checks["connection"]["summary"].endswith("certificate verified (sslmode=verify-full)")
    assert REMOTE_NAME in checks["connection"]["summary"]


def test_an_unverified_dsn_to_a_remote_host_fails_the_doctor_and_warns_a_run(
    on_trusted, capsys
) -> None:
    # given a DSN that asks for require by name, to a remote host
    dsn = remote_dsn(on_trusted, sslmode="require")

    # when the doctor checks it, then its connection check fails and says how to fix it
    exit_code, checks = doctor(dsn, capsys)
    assert exit_code == ExitCode.CHECKS_FAILED
    assert checks["connection"]["status"] == "fail"
    assert "certificate not verified (sslmode=require)" in checks["connection"]["summary"]
    assert "sslmode=verify-full" in checks["connection"]["fix"]

    # and a run goes ahead as asked, with a warning on stderr
    exit_code = main(["run", "--dsn", dsn, "--application-name", "lambda:none-*", "--dry-run"])
    err = capsys.readouterr().err
    assert exit_code == ExitCode.OK
    assert "warning" in err
    assert "sslmode=require does not verify the server's certificate" in err


def test_a_local_dsn_without_sslmode_keeps_working_and_the_doctor_only_warns(
    on_trusted, capsys
) -> None:
    # given a DSN to 127.0.0.1 that names no sslmode: libpq's prefer, unchanged
    dsn = make_conninfo(
        on_trusted.server.admin_dsn,
        user=on_trusted.reaper.name,
        password=on_trusted.reaper.password,
    )

    # when the doctor checks it, then the connection is a warning, not a failure
    exit_code, checks = doctor(dsn, capsys)
    assert exit_code == ExitCode.OK
    assert checks["connection"]["status"] == "warn"
    assert (
        "to 127.0.0.1, certificate not verified (sslmode=prefer)" in checks["connection"]["summary"]
    )
