"""AWS for the tests: moto, fake credentials, a seeded policy parameter and RDS-format secret.

The environment is changed only through monkeypatch. Process-wide Powertools state (metric sets,
parameter caches, the reaper's cached providers) is reset around every test by an autouse
fixture, so no test sees another's cached policy or pending metrics.

Also here, because they read what the function writes to CloudWatch: helpers that pick the EMF
blobs and the JSON log lines out of captured stdout.
"""

from __future__ import annotations

import io
import json
import os
import sys
import urllib.request
import zipfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from reaper.settings import lambda_variables
from tests.commands import run_command

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable, Iterator

    from tests.fix_db import PgServer, Role

REPOSITORY = Path(__file__).resolve().parents[1]
REGION = "us-east-1"
POLICY_PARAMETER_NAME = "/idle-reaper/test/policy"
SECRET_NAME = "idle-reaper/test/database"

EVENTS_DIR = Path(__file__).resolve().parents[1] / "events"

# Every variable the function reads: its settings (derived from the model, so a new setting is
# covered) and Powertools'. Cleared so a developer's shell cannot leak into a test.
FUNCTION_VARIABLES = (
    *lambda_variables(),
    "POWERTOOLS_PARAMETERS_MAX_AGE",
    "POWERTOOLS_METRICS_DISABLED",
    "POWERTOOLS_DEV",
    "POWERTOOLS_LOG_LEVEL",
)


def load_event(name: str) -> dict[str, Any]:
    """The shipped event `events/<name>`, decoded."""
    decoded: dict[str, Any] = json.loads((EVENTS_DIR / name).read_text())
    return decoded


def invoke(event: dict[str, Any] | str = "scheduled.json", *, timeout_seconds: int = 60) -> Any:
    """The function's handler on `event` (a shipped event's file name, or a document) in this
    process, with a context counting down from `timeout_seconds`; its summary."""
    from reaper.aws.handler import lambda_handler
    from reaper.cli.invoke import local_context

    document = load_event(event) if isinstance(event, str) else event
    return lambda_handler(document, local_context(timeout_seconds=timeout_seconds))


# -- process-wide state -----------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _reset_powertools() -> Iterator[None]:
    """Empty the shared metric set and every parameter cache before and after each test."""
    _reset()
    yield
    _reset()


def _reset() -> None:
    from aws_lambda_powertools.utilities import parameters

    from reaper.aws import _clients, concurrency, discovery, fanout, observability

    observability.metrics.clear_metrics()
    parameters.clear_caches()
    _clients.clear_clients()
    discovery.clear_cache()
    concurrency.clear_cache()
    fanout.forget_histories()


# -- environment and moto ---------------------------------------------------------------------


@pytest.fixture
def function_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A monkeypatch with every REAPER_/Powertools variable of the function unset, and every
    other REAPER_* one (REAPER_TEST_DSN, read before any test runs): the function refuses a
    REAPER_* variable it does not know."""
    others = [name for name in os.environ if name.upper().startswith("REAPER_")]
    for name in (*FUNCTION_VARIABLES, *others):
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
        # Never ask an instance metadata service for credentials or a Region.
        "AWS_EC2_METADATA_DISABLED": "true",
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


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """A moto server on a free local port, as AWS_ENDPOINT_URL gives it to the reaper."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws_at(moto_endpoint: str, aws_credentials: None) -> Iterator[Callable[[str], Any]]:
    """A boto3 client factory for the moto server, emptied after the test."""
    import boto3

    def client(service: str) -> Any:
        return boto3.client(service, region_name=REGION, endpoint_url=moto_endpoint)

    yield client
    request = urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=10):
        pass


def reaper(
    *arguments: str, endpoint: str, environment: dict[str, str], home: Path
) -> subprocess.CompletedProcess[str]:
    """Run the `reaper` command as a user with AWS credentials would, against `endpoint`."""
    inherited = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("REAPER_", "AWS_", "POWERTOOLS_"))
    }
    variables = {
        **inherited,
        **fake_aws_variables(home),
        "AWS_ENDPOINT_URL": endpoint,
        **environment,
    }
    script = Path(sys.executable).with_name("reaper")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "reaper"]
    return run_command([*command, *arguments], cwd=REPOSITORY, env=variables, timeout=180)


@dataclass
class LambdaAccount:
    """moto's Lambda and CloudWatch as one account: functions with or without reserved
    concurrency, and the ConcurrentExecutions Lambda would have published for them."""

    client: Callable[[str], Any]
    _role_arn: str | None = field(default=None, init=False)

    def function(self, name: str, *, reserved: int | None = None, peak: int | None = None) -> None:
        """Create function `name` (a stub handler), reserve `reserved`, and store a
        ConcurrentExecutions data point of `peak` an hour ago."""
        functions = self.client("lambda")
        functions.create_function(
            FunctionName=name,
            Runtime="python3.12",
            Role=self._role(),
            Handler="handler.handle",
            Code={"ZipFile": _stub_package()},
        )
        if reserved is not None:
            functions.put_function_concurrency(
                FunctionName=name, ReservedConcurrentExecutions=reserved
            )
        if peak is not None:
            self.peaks({name: peak})

    def peaks(self, peaks: dict[str, int]) -> None:
        """Store a ConcurrentExecutions data point an hour ago for each function."""
        an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
        data = [
            {
                "MetricName": "ConcurrentExecutions",
                "Dimensions": [{"Name": "FunctionName", "Value": name}],
                "Value": peak,
                "Timestamp": an_hour_ago,
            }
            for name, peak in peaks.items()
        ]
        for start in range(0, len(data), 1000):  # PutMetricData's limit per call
            self.client("cloudwatch").put_metric_data(
                Namespace="AWS/Lambda", MetricData=data[start : start + 1000]
            )

    def _role(self) -> str:
        # moto wants an existing execution role for a function, as Lambda does.
        if self._role_arn is None:
            self._role_arn = self.client("iam").create_role(
                RoleName="budget-test-function",
                AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}),
            )["Role"]["Arn"]
        return self._role_arn


def _stub_package() -> bytes:
    package = io.BytesIO()
    with zipfile.ZipFile(package, "w") as archive:
        archive.writestr("handler.py", "def handle(event, context):\n    return None\n")
    return package.getvalue()


@pytest.fixture
def lambda_account(aws: None) -> LambdaAccount:
    """moto's Lambda and CloudWatch, in this process."""
    import boto3

    return LambdaAccount(lambda service: boto3.client(service, region_name=REGION))


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
