"""AWS for the tests: moto, fake credentials, a seeded policy parameter and RDS-format secret.

The environment is changed only through monkeypatch. Process-wide Powertools state (metric sets,
parameter caches, the reaper's cached providers) is reset around every test by an autouse
fixture, so no test sees another's cached policy or pending metrics.

Also here, because they read what the function writes to CloudWatch: helpers that pick the EMF
blobs and the JSON log lines out of captured stdout.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.fix_db import PgServer, Role

REGION = "us-east-1"
POLICY_PARAMETER_NAME = "/idle-reaper/test/policy"
SECRET_NAME = "idle-reaper/test/database"

# Every variable LambdaSettings and Powertools read: cleared so a developer's shell cannot leak
# into a test.
FUNCTION_VARIABLES = (
    "REAPER_POLICY_PARAMETER",
    "REAPER_POLICY_FILE",
    "REAPER_POLICY_CACHE_SECONDS",
    "REAPER_SECRET_CACHE_SECONDS",
    "REAPER_DATABASE_URL",
    "REAPER_SECRET_ID",
    "REAPER_IAM_AUTH",
    "REAPER_DB_HOST",
    "REAPER_DB_PORT",
    "REAPER_DB_NAME",
    "REAPER_DB_USER",
    "REAPER_TARGETS",
    "REAPER_SSLMODE",
    "REAPER_SSLROOTCERT",
    "REAPER_CONNECT_TIMEOUT",
    "REAPER_DEADLINE_MARGIN_SECONDS",
    "REAPER_DISCOVERY_TAG",
    "REAPER_DISCOVERY_VPC_ID",
    "REAPER_DISCOVERY_CACHE_SECONDS",
    "REAPER_MAX_CONCURRENCY",
    "REAPER_TARGET_TIMEOUT_SECONDS",
    "POWERTOOLS_PARAMETERS_MAX_AGE",
    "POWERTOOLS_METRICS_DISABLED",
    "POWERTOOLS_DEV",
)


# -- process-wide state -----------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _reset_powertools() -> Iterator[None]:
    """Empty the shared metric set and every parameter cache before and after each test."""
    _reset()
    yield
    _reset()


def _reset() -> None:
    from aws_lambda_powertools.utilities import parameters

    from reaper.aws import _clients, discovery, fanout, observability

    observability.metrics.clear_metrics()
    parameters.clear_caches()
    _clients.clear_clients()
    discovery.clear_cache()
    fanout.forget_histories()


# -- environment and moto ---------------------------------------------------------------------


@pytest.fixture
def function_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A monkeypatch with every REAPER_/Powertools variable of the function unset."""
    for name in FUNCTION_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def fake_aws_variables(home: Path) -> dict[str, str]:
    """Fake credentials and a region, and AWS config files in `home` that do not exist, so no
    profile or config file of the machine is read (AWS_PROFILE must be unset too)."""
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_CONFIG_FILE": str(home / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "no-aws-credentials"),
    }


@pytest.fixture
def aws_credentials(function_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fake credentials and a region; no profile or config file of the machine is read."""
    for name, value in fake_aws_variables(tmp_path).items():
        function_env.setenv(name, value)
    function_env.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def aws(aws_credentials: None) -> Iterator[None]:
    """Every AWS call answered by moto."""
    from moto import mock_aws

    with mock_aws():
        yield


@pytest.fixture
def ssm_client(aws: None) -> Any:
    import boto3

    return boto3.client("ssm", region_name=REGION)


@pytest.fixture
def secrets_client(aws: None) -> Any:
    import boto3

    return boto3.client("secretsmanager", region_name=REGION)


@dataclass
class _StoredDocument:
    """A JSON document the function reads from AWS; `put` writes it (a dict or raw text)."""

    client: Any
    name: str

    def put(self, document: dict[str, Any] | str) -> None:
        self._store(document if isinstance(document, str) else json.dumps(document))

    def _store(self, text: str) -> None:
        raise NotImplementedError


class PolicyParameter(_StoredDocument):
    """The policy's SSM parameter; REAPER_POLICY_PARAMETER points at it."""

    def _store(self, text: str) -> None:
        # As `aws ssm put-parameter --overwrite` does.
        self.client.put_parameter(Name=self.name, Value=text, Type="String", Overwrite=True)


@pytest.fixture
def policy_parameter(ssm_client: Any, function_env: pytest.MonkeyPatch) -> PolicyParameter:
    """An SSM parameter (not yet written: call put) named by REAPER_POLICY_PARAMETER."""
    function_env.setenv("REAPER_POLICY_PARAMETER", POLICY_PARAMETER_NAME)
    return PolicyParameter(ssm_client, POLICY_PARAMETER_NAME)


def rds_secret_document(server: PgServer, role: Role, **overrides: Any) -> dict[str, Any]:
    """The secret RDS writes for a database user, pointing at `server`."""
    document: dict[str, Any] = {
        "engine": "postgres",
        "host": server.host,
        "port": server.port,
        "username": role.name,
        "password": role.password,
        "dbname": "postgres",
        "dbInstanceIdentifier": "orders-db",
    }
    document.update(overrides)
    return {key: value for key, value in document.items() if value is not None}


class RdsSecret(_StoredDocument):
    """The database secret; REAPER_SECRET_ID points at it."""

    def _store(self, text: str) -> None:
        # Create the secret, or store a new version (what a rotation does).
        try:
            self.client.put_secret_value(SecretId=self.name, SecretString=text)
        except self.client.exceptions.ResourceNotFoundException:
            self.client.create_secret(Name=self.name, SecretString=text)


@pytest.fixture
def rds_secret(secrets_client: Any, function_env: pytest.MonkeyPatch) -> RdsSecret:
    """A Secrets Manager secret (not yet written: call put) named by REAPER_SECRET_ID."""
    function_env.setenv("REAPER_SECRET_ID", SECRET_NAME)
    function_env.setenv("REAPER_SSLMODE", "prefer")  # the test servers have no TLS
    return RdsSecret(secrets_client, SECRET_NAME)


# -- reading what the function printed --------------------------------------------------------


def json_lines(output: str) -> list[dict[str, Any]]:
    """Every line of `output` that is a JSON object."""
    documents = []
    for line in output.splitlines():
        if not line.startswith("{"):
            continue
        try:
            document = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(document, dict):
            documents.append(document)
    return documents


def emf_blobs(output: str) -> list[dict[str, Any]]:
    """The CloudWatch EMF documents in `output`."""
    return [document for document in json_lines(output) if "_aws" in document]


def log_records(output: str) -> list[dict[str, Any]]:
    """The Powertools JSON log lines in `output`."""
    return [d for d in json_lines(output) if "_aws" not in d and "level" in d]


@dataclass(frozen=True)
class EmfMetric:
    """One metric of one EMF blob: value, unit, namespace and dimensions."""

    name: str
    value: float
    unit: str
    namespace: str
    dimensions: dict[str, str]
    dimension_sets: list[list[str]]


def emf_metrics(output: str) -> list[EmfMetric]:
    """Every metric in every EMF blob of `output`, flattened."""
    metrics = []
    for blob in emf_blobs(output):
        for directive in blob["_aws"]["CloudWatchMetrics"]:
            names = {name for dimension_set in directive["Dimensions"] for name in dimension_set}
            dimensions = {name: blob[name] for name in names}
            for definition in directive["Metrics"]:
                value = blob[definition["Name"]]
                metrics.append(
                    EmfMetric(
                        name=definition["Name"],
                        value=value[0] if isinstance(value, list) else value,
                        unit=definition["Unit"],
                        namespace=directive["Namespace"],
                        dimensions=dimensions,
                        dimension_sets=directive["Dimensions"],
                    )
                )
    return metrics


def metric(output: str, name: str, **dimensions: str) -> EmfMetric:
    """The one metric called `name` whose dimensions include `dimensions`."""
    found = [
        m
        for m in emf_metrics(output)
        if m.name == name and all(m.dimensions.get(k) == v for k, v in dimensions.items())
    ]
    assert len(found) == 1, f"expected one {name} {dimensions}, found {found}"
    return found[0]
