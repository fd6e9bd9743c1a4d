"""The AWS clients of the function, made on first use and kept by warm invocations.

One botocore configuration for all of them, and one way to name what an AWS call answered.
"""

from __future__ import annotations

import functools
from typing import Any

import boto3
from aws_lambda_powertools.utilities.parameters import SecretsProvider, SSMProvider
from botocore.config import Config
from botocore.exceptions import ClientError

from reaper.settings import AwsSettings

# From inside a VPC without an SSM or Secrets Manager endpoint the default botocore timeouts
# (60 s, with retries) would outlast the function; fail fast instead, so the error is logged
# and counted.
CLIENT_CONFIG = Config(
    connect_timeout=3, read_timeout=5, retries={"mode": "standard", "max_attempts": 3}
)


def _config() -> Config:
    """CLIENT_CONFIG in the Region of AWS_REGION (Lambda's, and the docs'), else of
    AWS_DEFAULT_REGION: boto3 alone reads only the latter, and then finds no Region at all
    on a laptop that sets only AWS_REGION."""
    region = AwsSettings().region
    return CLIENT_CONFIG if region is None else CLIENT_CONFIG.merge(Config(region_name=region))


@functools.cache
def ssm_provider() -> SSMProvider:
    """The SSM provider (the policy parameter), with its cache."""
    return SSMProvider(boto_config=_config())


@functools.cache
def secrets_provider() -> SecretsProvider:
    """The Secrets Manager provider (the database secret), with its cache."""
    return SecretsProvider(boto_config=_config())


@functools.cache
def rds_client() -> Any:
    """The RDS client: it signs IAM authentication tokens and lists the databases to discover.

    A session of its own: boto3's default session is not safe to use from the target threads
    at once. Typed as Any: boto3 is untyped without the optional stubs package.
    """
    return boto3.session.Session().client("rds", config=_config())


@functools.cache
def lambda_client() -> Any:
    """The Lambda client: the functions' concurrency, for the connection budget."""
    return boto3.session.Session().client("lambda", config=_config())


@functools.cache
def cloudwatch_client() -> Any:
    """The CloudWatch client: the functions' observed ConcurrentExecutions."""
    return boto3.session.Session().client("cloudwatch", config=_config())


def clear_clients() -> None:
    """Forget the clients and the values they cached (tests; later calls build fresh ones)."""
    ssm_provider.cache_clear()
    secrets_provider.cache_clear()
    rds_client.cache_clear()
    lambda_client.cache_clear()
    cloudwatch_client.cache_clear()


def error_reason(exc: BaseException) -> str:
    """The AWS error code and message of a ClientError, or of the one behind a Powertools
    error (which wraps it)."""
    cause = exc if isinstance(exc, ClientError) else exc.__cause__ or exc.__context__
    if isinstance(cause, ClientError):
        error = cause.response.get("Error", {})
        code = error.get("Code", "error")
        message = error.get("Message", "")
        return f"{code}: {message}" if message else code
    return str(exc) or type(exc).__name__
