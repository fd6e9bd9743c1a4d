"""LambdaSettings: every impossible configuration is a SettingsError naming the variables, and
no error message ever repeats a password."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reaper.errors import SettingsError
from reaper.pg.tls import RDS_CA_BUNDLE
from reaper.settings import (
    LambdaSettings,
    LocalSettings,
    TargetSpec,
    lambda_variables,
    load_lambda_settings,
    load_observability_settings,
    unknown_variable_hint,
)

DSN = "postgresql://reaper:s3cret-pw@db.internal:5432/postgres"


def load(monkeypatch: pytest.MonkeyPatch, **variables: str) -> LambdaSettings:
    for name, value in variables.items():
        monkeypatch.setenv(f"REAPER_{name.upper()}", value)
    return load_lambda_settings()


def test_a_dsn_alone_is_a_complete_local_configuration(function_env) -> None:
    settings = load(function_env, database_url=DSN)
    assert settings.target_entries() == (TargetSpec(name="default"),)
    assert settings.database_url_value() == DSN
    assert settings.policy_cache_seconds == 60
    assert settings.connect_timeout == 5
    assert settings.deadline_margin_seconds == 5.0


def test_empty_variables_count_as_unset(function_env) -> None:
    # A template's "" default for an optional parameter must not mean "the empty path".
    settings = load(function_env, database_url=DSN, policy_file="", sslrootcert="", targets="")
    assert settings.policy_file is None
    assert settings.sslrootcert is None
    assert settings.targets is None


def test_lambda_settings_keep_the_command_lines_settings_working(function_env) -> None:
    function_env.setenv("REAPER_DATABASE_URL", DSN)
    assert LocalSettings().database_url_value() == DSN


BAD_CONFIGURATIONS = [
    pytest.param(
        {"database_url": DSN, "policy_parameter": "/p", "policy_file": "policy.json"},
        ["REAPER_POLICY_PARAMETER", "REAPER_POLICY_FILE"],
        id="two-policy-sources",
    ),
    pytest.param({}, ["no target configured", "REAPER_DATABASE_URL"], id="no-target"),
    pytest.param(
        {"database_url": DSN, "secret_id": "db"},
        ["REAPER_DATABASE_URL", "REAPER_SECRET_ID"],
        id="two-logins",
    ),
    pytest.param(
        {"iam_auth": "true", "db_host": "db.internal"}, ["REAPER_DB_USER"], id="iam-without-user"
    ),
    pytest.param({"iam_auth": "true", "db_user": "reaper"}, ["REAPER_DB_HOST"], id="iam-no-host"),
    pytest.param(
        {"secret_id": "db", "db_host": "db.internal"},
        ["REAPER_DB_HOST", "REAPER_IAM_AUTH"],
        id="db-host-without-iam",
    ),
    pytest.param(
        {"database_url": DSN, "targets": '[{"name": "writer"'},
        ["REAPER_TARGETS", "not valid JSON"],
        id="targets-not-json",
    ),
    pytest.param(
        {"database_url": DSN, "targets": '[{"name": "w"}, {"name": "w"}]'},
        ["REAPER_TARGETS", "repeated: w"],
        id="targets-repeated",
    ),
    pytest.param(
        {"database_url": DSN, "targets": '[{"name": "w", "hots": "x"}]'},
        ["REAPER_TARGETS[0].hots"],
        id="targets-unknown-key",
    ),
    pytest.param(
        {"database_url": DSN, "targets": '[{"name": "has space"}]'},
        ["REAPER_TARGETS[0].name"],
        id="targets-bad-name",
    ),
    pytest.param(
        {"database_url": DSN, "targets": "[]"}, ["REAPER_TARGETS", "empty"], id="targets-empty"
    ),
    pytest.param(
        {"database_url": DSN, "targets": '[{"name": "w", "host": "a", "host": "b"}]'},
        ["REAPER_TARGETS", "duplicate key 'host' in [0]"],
        id="targets-duplicate-key",
    ),
    pytest.param(
        {"targets": '[{"name": "writer", "host": "db.internal"}]'},
        ["REAPER_TARGETS[0]", "no 'dsn'"],
        id="target-without-base",
    ),
    pytest.param(
        {"targets": json.dumps([{"name": "w", "dsn": DSN, "host": "other"}])},
        ["REAPER_TARGETS", "either 'dsn'"],
        id="target-dsn-and-host",
    ),
    pytest.param(
        {"secret_id": "db", "sslmode": "prefer", "sslrootcert": "/ca.pem"},
        ["REAPER_SSLROOTCERT", "REAPER_SSLMODE=prefer"],
        id="ca-bundle-without-tls",
    ),
    pytest.param(
        {"secret_id": "db", "sslmode": "requir"}, ["REAPER_SSLMODE", "'requir'"], id="sslmode"
    ),
    pytest.param(
        {"database_url": DSN, "connect_timeout": "0"}, ["REAPER_CONNECT_TIMEOUT"], id="timeout"
    ),
    pytest.param(
        {"database_url": DSN, "policy_cache_seconds": "soon"},
        ["REAPER_POLICY_CACHE_SECONDS"],
        id="cache-seconds",
    ),
]


@pytest.mark.parametrize(("variables", "named"), BAD_CONFIGURATIONS)
def test_impossible_configuration_is_a_settings_error_naming_the_variables(
    function_env, variables, named
) -> None:
    with pytest.raises(SettingsError) as raised:
        load(function_env, **variables)
    for text in named:
        assert text in str(raised.value)
    assert "s3cret-pw" not in str(raised.value)


def test_malformed_targets_never_repeat_a_dsn_they_hold(function_env) -> None:
    # given a REAPER_TARGETS whose entry is valid JSON but has a bad field next to a DSN
    targets = json.dumps([{"name": "w", "dsn": DSN, "port": "not-a-port"}])

    # when it is loaded, then the error names the field but not the password
    with pytest.raises(SettingsError, match=r"REAPER_TARGETS\[0\]\.port") as raised:
        load(function_env, targets=targets)
    assert "s3cret-pw" not in str(raised.value)


@given(
    password=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=12, max_size=24),
    garbage=st.sampled_from(
        ["", "}", ",", '{"name":', "[[", ", null]", ', {"name": "w"}]', ', {"port": 0}]']
    ),
)
def test_no_malformed_targets_document_leaks_its_password(password: str, garbage: str) -> None:
    # given any broken REAPER_TARGETS holding a DSN with a password
    text = f'[{{"name": "w", "dsn": "postgresql://u:{password}@h/db"}}{garbage}'
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REAPER_DATABASE_URL", DSN)
        patch.setenv("REAPER_TARGETS", text)
        # when it is loaded, then it fails without the password
        with pytest.raises(SettingsError) as raised:
            load_lambda_settings()
    assert password not in str(raised.value)


@pytest.mark.parametrize(
    ("sslmode", "sslrootcert", "expected", "expected_ca"),
    [
        # Unset: the server is verified against the RDS bundle shipped in the package.
        (None, None, "verify-full", RDS_CA_BUNDLE),
        ("verify-full", None, "verify-full", RDS_CA_BUNDLE),
        ("verify-ca", None, "verify-ca", RDS_CA_BUNDLE),
        # Weaker only when asked for by name, and then with no CA at all.
        ("require", None, "require", None),
        ("disable", None, "disable", None),
        # A CA of one's own: require (the template's former default) is upgraded to use it.
        (None, "/ca.pem", "verify-full", Path("/ca.pem")),
        ("require", "/ca.pem", "verify-full", Path("/ca.pem")),
        ("verify-ca", "/ca.pem", "verify-ca", Path("/ca.pem")),
        ("verify-full", "/ca.pem", "verify-full", Path("/ca.pem")),
    ],
)
def test_tls_is_verified_against_the_shipped_rds_bundle_unless_told_otherwise(
    function_env, sslmode, sslrootcert, expected, expected_ca
) -> None:
    variables = {"secret_id": "db"}
    if sslmode:
        variables["sslmode"] = sslmode
    if sslrootcert:
        variables["sslrootcert"] = sslrootcert
    settings = load(function_env, **variables)
    assert settings.effective_sslmode() == expected
    assert settings.effective_sslrootcert() == expected_ca


def test_several_targets_share_one_secret_with_their_own_endpoints(function_env) -> None:
    settings = load(
        function_env,
        secret_id="arn:aws:secretsmanager:us-east-1:123456789012:secret:db-AbCdEf",
        targets=json.dumps(
            [
                {"name": "writer", "host": "orders.cluster-abc.rds.amazonaws.com"},
                {"name": "reader", "host": "orders.cluster-ro-abc.rds.amazonaws.com", "port": 5433},
            ]
        ),
    )
    assert [entry.name for entry in settings.target_entries()] == ["writer", "reader"]
    assert settings.target_entries()[1].port == 5433


def test_policy_file_setting_is_a_path(function_env) -> None:
    settings = load(function_env, database_url=DSN, policy_file="conf/policy.json")
    assert settings.policy_file == Path("conf/policy.json")


@pytest.mark.parametrize(
    ("variable", "nearest"),
    [
        ("REAPER_POLICY_FIEL", "REAPER_POLICY_FILE"),
        ("REAPER_DRY_RUN", None),
        ("reaper_max_concurency", "REAPER_MAX_CONCURRENCY"),
        ("REAPER_SSL_MODE", "REAPER_SSLMODE"),
    ],
)
def test_an_unknown_reaper_variable_is_refused_with_the_nearest_name(
    function_env, variable, nearest
) -> None:
    # given a complete configuration and a variable the function does not read
    function_env.setenv(variable, "policy.json")
    # when the settings are loaded, then nothing runs: the variable and its nearest name are said
    with pytest.raises(SettingsError) as raised:
        load(function_env, database_url=DSN)
    message = str(raised.value)
    assert f"unknown variable {variable}" in message
    if nearest:
        assert f"(did you mean {nearest}?)" in message
    else:
        assert "did you mean" not in message
    assert "s3cret-pw" not in message


def test_many_unknown_variables_give_a_short_message(function_env) -> None:
    for index in range(40):
        function_env.setenv(f"REAPER_UNKNOWN_{index:02}_{'X' * 200}", "1")
    with pytest.raises(SettingsError) as raised:
        load(function_env, database_url=DSN)
    assert "and 30 more" in str(raised.value)
    assert len(str(raised.value)) < 1_500


def test_every_variable_the_function_reads_is_known(function_env) -> None:
    # Each with a value that makes it set: none of them is refused as unknown.
    for name in lambda_variables():
        function_env.setenv(name, "")
    assert load(function_env, database_url=DSN).database_url_value() == DSN


def test_the_command_lines_hint_names_a_misspelt_database_url_only(function_env) -> None:
    function_env.setenv("REAPER_DATABSE_URL", DSN)
    function_env.setenv("REAPER_POLICY_FIEL", "policy.json")
    function_env.setenv("REAPER_POLICY_FILE", "policy.json")
    assert unknown_variable_hint("REAPER_DATABASE_URL") == (
        "; REAPER_DATABSE_URL is set: did you mean REAPER_DATABASE_URL?"
    )
    assert LocalSettings().database_url_value() is None


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("POWERTOOLS_LOG_LEVEL", "debug", "DEBUG"),
        ("POWERTOOLS_LOG_LEVEL", "WARNING", "WARNING"),
        ("LOG_LEVEL", "error", "ERROR"),
        (None, None, None),
    ],
)
def test_log_levels_are_taken_in_any_case(monkeypatch, variable, value, expected) -> None:
    for name in ("POWERTOOLS_LOG_LEVEL", "LOG_LEVEL"):
        monkeypatch.delenv(name, raising=False)
    if variable:
        monkeypatch.setenv(variable, value)
    assert load_observability_settings().logger_level() == expected


@pytest.mark.parametrize("variable", ["POWERTOOLS_LOG_LEVEL", "LOG_LEVEL"])
def test_a_bad_log_level_is_refused_naming_the_variable(monkeypatch, variable) -> None:
    for name in ("POWERTOOLS_LOG_LEVEL", "LOG_LEVEL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, "LOUD")
    with pytest.raises(SettingsError, match=rf"{variable}: not a log level; use one of DEBUG"):
        load_observability_settings()
