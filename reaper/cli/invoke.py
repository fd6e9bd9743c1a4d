"""`reaper invoke EVENT_FILE`: run the Lambda handler locally, as `sam local invoke -e` would.

No Docker and no AWS: the handler runs in this process with the environment variables the
Lambda runtime sets and a context object shaped like Lambda's. The EMF blobs and JSON log lines
go to stdout as they would to CloudWatch, then the returned JSON (or Lambda's errorMessage /
errorType document) is printed. The function's own REAPER_* settings come from the caller's
environment, as they come from the template's Environment in AWS.

This module writes os.environ on purpose, which settings.py otherwise owns: it plays the Lambda
runtime, whose job is to set the environment before the handler runs. Every variable it sets
is restored when the invocation ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from reaper.actions.files import read_text
from reaper.core.validation import JsonDocumentError, parse_json
from reaper.errors import EventError
from reaper.settings import METRICS_NAMESPACE, SERVICE_NAME, AwsSettings

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from pathlib import Path

DEFAULT_FUNCTION_NAME = SERVICE_NAME
DEFAULT_TIMEOUT_SECONDS = 60
DEFAULT_MEMORY_MB = 256
DEFAULT_REGION = "us-east-1"
# The account sam local uses in the ARNs it makes up.
LOCAL_ACCOUNT_ID = "123456789012"
RUNTIME = "python3.12"


@dataclass
class LocalLambdaContext:
    """The attributes and method of Lambda's context object that handlers use."""

    function_name: str
    memory_limit_in_mb: int
    timeout_seconds: float
    region: str
    function_version: str = "$LATEST"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    identity: Any = None
    client_context: Any = None
    _deadline: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._deadline = time.monotonic() + self.timeout_seconds

    @property
    def invoked_function_arn(self) -> str:
        """arn:aws:lambda:REGION:ACCOUNT:function:NAME."""
        return f"arn:aws:lambda:{self.region}:{LOCAL_ACCOUNT_ID}:function:{self.function_name}"

    @property
    def log_group_name(self) -> str:
        """/aws/lambda/NAME, as Lambda names it."""
        return f"/aws/lambda/{self.function_name}"

    @property
    def log_stream_name(self) -> str:
        """YYYY/MM/DD/[$LATEST]<hex>, as Lambda names it."""
        return _log_stream_name(self.function_version)

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds until the configured timeout, counting down from creation."""
        return max(0, int((self._deadline - time.monotonic()) * 1000))


_LOG_STREAM_SUFFIX = secrets.token_hex(16)


def _log_stream_name(version: str) -> str:
    return f"{datetime.now(UTC):%Y/%m/%d}/[{version}]{_LOG_STREAM_SUFFIX}"


def read_event(event_file: Path) -> Any:
    """The event document in `event_file`.

    Raises:
        EventError: the file cannot be read, is not JSON or repeats a key (the Lambda runtime
            would keep the last value; see reaper.aws.events).
    """
    text = read_text(event_file, described_as=f"event file {event_file}", error=EventError)
    try:
        return parse_json(text)
    except JsonDocumentError as exc:
        raise EventError(f"event file {event_file}: {exc}") from exc


def _runtime_environment(context: LocalLambdaContext) -> dict[str, str]:
    """The variables the Lambda runtime sets for a function like `context` describes."""
    return {
        "AWS_LAMBDA_FUNCTION_NAME": context.function_name,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(context.memory_limit_in_mb),
        "AWS_LAMBDA_FUNCTION_VERSION": context.function_version,
        "AWS_LAMBDA_LOG_GROUP_NAME": context.log_group_name,
        "AWS_LAMBDA_LOG_STREAM_NAME": context.log_stream_name,
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "AWS_EXECUTION_ENV": f"AWS_Lambda_{RUNTIME}",
        "AWS_REGION": context.region,
        "AWS_DEFAULT_REGION": context.region,
    }


# Set only when the caller has not: the template sets them, a local user may override them.
_TEMPLATE_DEFAULTS = {
    "POWERTOOLS_SERVICE_NAME": SERVICE_NAME,
    "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
}


@contextlib.contextmanager
def emulated_environment(variables: Mapping[str, str]) -> Iterator[None]:
    """Set `variables` (and the template's Powertools defaults where unset) for the duration."""
    wanted = dict(variables)
    for name, default in _TEMPLATE_DEFAULTS.items():
        wanted.setdefault(name, os.environ.get(name, default))
    saved = {name: os.environ.get(name) for name in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for name, previous in saved.items():
            if previous is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = previous


def local_context(
    *,
    function_name: str = DEFAULT_FUNCTION_NAME,
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS,
    memory_mb: int = DEFAULT_MEMORY_MB,
) -> LocalLambdaContext:
    """A fresh context (new request id, countdown from now) in the caller's region."""
    region = AwsSettings().region or DEFAULT_REGION
    return LocalLambdaContext(
        function_name=function_name,
        memory_limit_in_mb=memory_mb,
        timeout_seconds=timeout_seconds,
        region=region,
    )


def invoke_event(event: Any, context: LocalLambdaContext) -> Any:
    """Run the handler once on `event` inside the emulated runtime environment.

    Raises:
        Exception: whatever the handler raised.
    """
    with emulated_environment(_runtime_environment(context)):
        # Imported here, as the runtime imports the handler module inside its environment.
        from reaper.aws.handler import lambda_handler

        return lambda_handler(event, context)


def invoke_main(
    event_file: Path,
    *,
    function_name: str = DEFAULT_FUNCTION_NAME,
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS,
    memory_mb: int = DEFAULT_MEMORY_MB,
) -> int:
    """`reaper invoke`: the log lines, then the response; 0 on success, 1 if the handler raised.

    The timeout is the context's countdown, which the handler's time budget follows; as with
    the handler's own deadline margin, nothing kills the handler when it runs out.

    Raises:
        EventError: the event file is unreadable or not JSON (nothing was invoked).
    """
    event = read_event(event_file)
    context = local_context(
        function_name=function_name, timeout_seconds=timeout_seconds, memory_mb=memory_mb
    )
    try:
        response = invoke_event(event, context)
    except Exception as exc:
        # Like the Lambda runtime: any exception from the handler is the invocation's error.
        print(json.dumps(_lambda_error_document(exc, request_id=context.aws_request_id)))
        return 1
    # One line, as sam local invoke prints the response after the function's own output.
    print(json.dumps(response, default=str))
    return 0


def _lambda_error_document(exc: BaseException, *, request_id: str) -> dict[str, Any]:
    """The document Lambda returns for an invocation whose handler raised."""
    return {
        "errorMessage": str(exc),
        "errorType": type(exc).__name__,
        "requestId": request_id,
        "stackTrace": traceback.format_tb(exc.__traceback__),
    }
