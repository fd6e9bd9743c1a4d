"""Logging in through Secrets Manager (moto) and RDS IAM tokens, against a real PostgreSQL.

A secret that is missing or malformed is a target error naming the secret or the key, never a
value; a rotated password is picked up by reading the secret again once; an IAM token is a
password like any other and is never printed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest
from psycopg import sql

from reaper.aws.credentials import build_target
from reaper.errors import CredentialsError, TargetsFailedError
from reaper.pg.tls import RDS_CA_BUNDLE
from reaper.settings import TargetSpec, load_lambda_settings
from tests.fix_aws import SECRET_NAME, invoke, log_records, metric, rds_secret_document
from tests.functional.reaping import FUNCTION_THRESHOLD as THRESHOLD
from tests.functional.reaping import policy_document

if TYPE_CHECKING:
    from pathlib import Path

    from tests.fix_aws import RdsSecret
    from tests.fix_db import PgServer, Role

# What every RDS IAM token looks like: a presigned "connect" request.
IAM_TOKEN_MARKERS = ("Action=connect", "X-Amz-Signature=", "X-Amz-Credential=")


@pytest.fixture
def policy_file(function_env, session_factory, tmp_path) -> Path:
    """REAPER_POLICY_FILE: reap this test's 'orders' sessions idle past THRESHOLD."""
    path = tmp_path / "policy.json"
    path.write_text(policy_document([session_factory.app("orders")], THRESHOLD))
    function_env.setenv("REAPER_POLICY_FILE", str(path))
    return path


@dataclass
class SecretLogin:
    """The reaper role's login, stored in the RDS-format secret."""

    server: PgServer
    role: Role
    secret: RdsSecret

    def rotate(self, admin_conn) -> str:
        """Change the password in PostgreSQL and in the secret, as a rotation does."""
        new_password = self.role.password + "-rotated"
        admin_conn.execute(
            sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                sql.Identifier(self.role.name), sql.Literal(new_password)
            )
        )
        self.secret.put(rds_secret_document(self.server, self.role, password=new_password))
        return new_password


@pytest.fixture
def secret_login(pg_server, reaper_role, rds_secret) -> SecretLogin:
    rds_secret.put(rds_secret_document(pg_server, reaper_role))
    return SecretLogin(pg_server, reaper_role, rds_secret)


@pytest.mark.usefixtures("policy_file")
@pytest.mark.slow
def test_secret_in_rds_format_supplies_the_reapers_login(apps, secret_login, capsys) -> None:
    # given the reaper's login in an RDS-format secret and a stale session
    pid = apps.open_stale("orders", threshold=THRESHOLD)

    # when a pass runs
    summary = invoke()

    # then it logged in with the secret and reaped, printing no password
    assert summary["targets"][0]["status"] == "ok"
    assert apps.ended(pid)
    captured = capsys.readouterr()
    assert secret_login.role.password not in captured.out + captured.err


@pytest.mark.usefixtures("rds_secret", "policy_file")
@pytest.mark.slow
def test_missing_secret_is_a_target_error_naming_the_secret(apps, capsys) -> None:
    # given REAPER_SECRET_ID naming a secret that does not exist, and a stale session
    pid = apps.open_stale("orders", threshold=THRESHOLD)
    capsys.readouterr()

    # when a pass runs, then the invocation fails
    with pytest.raises(TargetsFailedError):
        invoke()

    # and the error line names the secret, TargetErrors is 1, nothing was terminated
    assert apps.alive(pid)
    out = capsys.readouterr().out
    (line,) = [r for r in log_records(out) if r.get("audit") == "target_error"]
    assert line["error_type"] == "CredentialsError"
    assert SECRET_NAME in line["error"]
    assert "ResourceNotFoundException" in line["error"]
    assert metric(out, "TargetErrors", Target="default").value == 1


@pytest.mark.usefixtures("policy_file")
def test_secret_without_a_password_names_the_missing_key_and_no_value(
    pg_server, reaper_role, rds_secret, capsys
) -> None:
    # given a secret that lost its "password" key
    document = rds_secret_document(pg_server, reaper_role, password=None)
    document["note"] = "rotation-scratch-value-7c1f"
    rds_secret.put(document)

    # when a pass runs, then the invocation fails
    with pytest.raises(TargetsFailedError):
        invoke()

    # and the error names the key and the secret, but repeats no value from it
    out = capsys.readouterr().out
    (line,) = [r for r in log_records(out) if r.get("audit") == "target_error"]
    assert "'password'" in line["error"]
    assert SECRET_NAME in line["error"]
    assert "rotation-scratch-value-7c1f" not in out
    assert reaper_role.password not in out


def test_secret_that_is_not_json_is_a_credentials_error_without_its_text(rds_secret) -> None:
    # given a secret holding a bare password instead of the RDS JSON document
    rds_secret.put("plain-password-4f2a")
    settings = load_lambda_settings()

    # when the target is built, then the error says what is wrong without the text
    with pytest.raises(CredentialsError, match="not valid JSON") as raised:
        build_target(settings, TargetSpec(name="default"))
    assert "plain-password-4f2a" not in str(raised.value)
    assert raised.value.__cause__ is None


def test_secret_that_repeats_a_key_is_refused_naming_the_key_not_its_values(
    rds_secret,
) -> None:
    # given a secret whose two "password" keys would each log in to a different server
    rds_secret.put('{"username": "reaper", "password": "first-4f2a", "password": "second-9b1c"}')
    settings = load_lambda_settings()

    # when the target is built, then the error names the key, and neither value
    with pytest.raises(CredentialsError, match="duplicate key 'password'") as raised:
        build_target(settings, TargetSpec(name="default"))
    assert "first-4f2a" not in str(raised.value)
    assert "second-9b1c" not in str(raised.value)


@pytest.mark.usefixtures("policy_file", "server_checks_passwords")
@pytest.mark.slow
def test_rotated_password_is_picked_up_by_reading_the_secret_again_once(
    admin_conn, apps, secret_login, capsys
) -> None:
    # given a warm function that has cached the secret for five minutes
    assert invoke()["targets"][0]["status"] == "ok"

    # when the password is rotated in PostgreSQL and in the secret, and a stale session waits
    old_password = secret_login.role.password
    new_password = secret_login.rotate(admin_conn)
    pid = apps.open_stale("orders", threshold=THRESHOLD)
    capsys.readouterr()
    summary = invoke()

    # then the refused login made it read the secret again, and the pass succeeded
    (target,) = summary["targets"]
    assert target["status"] == "ok"
    assert target["secret_reread"] is True
    assert apps.ended(pid)
    out = capsys.readouterr().out
    assert any("rotated password" in r["message"] for r in log_records(out))
    assert new_password not in out
    assert old_password not in out


def test_secret_target_verifies_the_server_and_never_answers_a_cleartext_request(
    pg_server, reaper_role, rds_secret, function_env
) -> None:
    # given a secret login and the stack's default TLS settings
    function_env.delenv("REAPER_SSLMODE")
    rds_secret.put(rds_secret_document(pg_server, reaper_role))

    # when the target is built
    target = build_target(load_lambda_settings(), TargetSpec(name="default"))

    # then the server must prove itself with an RDS certificate, and may ask for SCRAM or MD5
    # but never for the password itself
    assert target.params["sslmode"] == "verify-full"
    assert target.params["sslrootcert"] == str(RDS_CA_BUNDLE)
    assert target.params["require_auth"] == "!password"


@pytest.mark.usefixtures("aws")
def test_iam_target_carries_endpoint_user_tls_and_a_signed_token(function_env) -> None:
    # given IAM authentication settings
    function_env.setenv("REAPER_IAM_AUTH", "true")
    function_env.setenv("REAPER_DB_HOST", "orders.cluster-abc.us-east-1.rds.amazonaws.com")
    function_env.setenv("REAPER_DB_PORT", "5433")
    function_env.setenv("REAPER_DB_USER", "reaper")
    settings = load_lambda_settings()

    # when the target is built
    target = build_target(settings, TargetSpec(name="default"))

    # then it has the endpoint, the user, TLS verified against the shipped RDS CA bundle, a
    # token as password, and only the cleartext request RDS IAM makes is answered
    params = dict(target.params)
    token = params.pop("password")
    assert params == {
        "host": "orders.cluster-abc.us-east-1.rds.amazonaws.com",
        "port": "5433",
        "user": "reaper",
        "dbname": "postgres",
        "sslmode": "verify-full",
        "sslrootcert": str(RDS_CA_BUNDLE),
        "require_auth": "password",
    }
    assert token.startswith("orders.cluster-abc.us-east-1.rds.amazonaws.com:5433/?")
    assert all(marker in token for marker in IAM_TOKEN_MARKERS)
    assert "DBUser=reaper" in token
    assert token not in repr(target)


@pytest.mark.usefixtures("aws")
def test_iam_targets_override_the_host_per_entry_and_verify_with_a_ca_bundle(
    function_env, tmp_path
) -> None:
    # given IAM authentication for an Aurora writer and reader, with a CA bundle
    bundle = tmp_path / "global-bundle.pem"
    function_env.setenv("REAPER_IAM_AUTH", "true")
    function_env.setenv("REAPER_DB_USER", "reaper")
    function_env.setenv("REAPER_SSLROOTCERT", str(bundle))
    function_env.setenv(
        "REAPER_TARGETS",
        json.dumps(
            [
                {"name": "writer", "host": "orders.cluster-abc.rds.amazonaws.com"},
                {"name": "reader", "host": "orders.cluster-ro-abc.rds.amazonaws.com"},
            ]
        ),
    )
    settings = load_lambda_settings()

    # when the targets are built
    writer, reader = (build_target(settings, entry) for entry in settings.target_entries())

    # then each has its own host and its own token, and TLS verifies the server
    assert writer.params["host"] == "orders.cluster-abc.rds.amazonaws.com"
    assert reader.params["host"] == "orders.cluster-ro-abc.rds.amazonaws.com"
    assert reader.params["password"].startswith("orders.cluster-ro-abc.rds.amazonaws.com:5432/?")
    for target in (writer, reader):
        assert target.params["sslmode"] == "verify-full"
        assert target.params["sslrootcert"] == str(bundle)


@pytest.mark.usefixtures("aws", "policy_file", "server_checks_passwords")
def test_iam_token_never_appears_in_the_output_when_the_login_fails(
    pg_server, reaper_role, function_env, capsys
) -> None:
    # given IAM settings pointing at a server that does not accept IAM tokens
    function_env.setenv("REAPER_IAM_AUTH", "true")
    function_env.setenv("REAPER_DB_HOST", pg_server.host)
    function_env.setenv("REAPER_DB_PORT", str(pg_server.port))
    function_env.setenv("REAPER_DB_USER", reaper_role.name)
    function_env.setenv("REAPER_SSLMODE", "prefer")

    # when a pass runs, then the login is refused and the invocation fails
    with pytest.raises(TargetsFailedError):
        invoke()

    # and the error is logged without the token: libpq refused to answer the server's SCRAM
    # request with it (require_auth=password), and the function did not retry
    captured = capsys.readouterr()
    (line,) = [r for r in log_records(captured.out) if r.get("audit") == "target_error"]
    assert line["error_type"] == "TargetUnreachableError"
    assert 'authentication method requirement "password" failed' in line["error"]
    for marker in IAM_TOKEN_MARKERS:
        assert marker not in captured.out
        assert marker not in captured.err
