"""What a script, a pipe or a newcomer sees of the `reaper` command: one JSON shape, no
traceback when the reader leaves, help that names what is read, input refused before work."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from reaper.settings import lambda_variables
from tests.commands import run_command
from tests.fix_aws import fake_aws_variables

if TYPE_CHECKING:
    from pathlib import Path

REAPER = [sys.executable, "-m", "reaper"]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again on return: nothing listens there


def reader_leaves_at_once(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `reaper *args` with a stdout pipe whose reader closes it before anything is read,
    as `| head -c 10` does once it has its bytes."""
    process = subprocess.Popen(
        [*REAPER, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    process.stdout.close()
    _, stderr = process.communicate(timeout=60)
    return subprocess.CompletedProcess(process.args, process.returncode, "", stderr)


def test_help_lists_every_exit_code_with_the_interrupt() -> None:
    done = run_command([*REAPER, "--help"], timeout=30)
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    for code in ("0 done", "2 bad input", "3 target unreachable", "6 database full", "130"):
        assert code in text


@pytest.mark.parametrize("command", ["invoke", "targets"])
def test_function_commands_name_the_variables_they_read(command: str) -> None:
    done = run_command([*REAPER, command, "--help"], timeout=30)
    text = "".join(done.stdout.split())
    assert done.returncode == 0
    for variable in lambda_variables():
        assert variable in text
    assert "AWS_REGION" in text


def test_a_failed_json_command_prints_one_json_document_and_the_line_on_stderr() -> None:
    dsn = f"postgresql://reaper:s3cret-Pa55@127.0.0.1:{closed_port()}/postgres"
    done = run_command(
        [*REAPER, "run", "--json", "--dsn", dsn, "--application-name", "lambda:*"], timeout=60
    )
    assert done.returncode == 3
    document = json.loads(done.stdout)
    assert document["error"]["type"] == "TargetUnreachableError"
    assert document["error"]["exit_code"] == 3
    assert "127.0.0.1" in document["error"]["message"]
    assert done.stderr.startswith("reaper: error: cannot connect")
    assert "s3cret-Pa55" not in done.stdout + done.stderr


def test_bad_input_to_a_json_command_is_a_json_document_too(tmp_path: Path) -> None:
    done = run_command([*REAPER, "report", "--json"], timeout=30, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 2
    assert json.loads(done.stdout)["error"]["type"] == "SettingsError"


@pytest.mark.parametrize("args", [("policy", "schema"), ("--version",)])
def test_a_reader_that_leaves_early_gets_no_traceback(args: tuple[str, ...]) -> None:
    done = reader_leaves_at_once(*args)
    assert "Traceback" not in done.stderr
    assert "BrokenPipeError" not in done.stderr


@pytest.mark.slow
def test_report_and_run_to_a_reader_that_leaves_early_exit_cleanly(reaper_dsn: str, apps) -> None:
    apps.open("orders")
    for args in (
        ("report", "--json", "--dsn", reaper_dsn),
        ("run", "--json", "--dry-run", "--dsn", reaper_dsn, "--application-name", "none:*"),
    ):
        done = reader_leaves_at_once(*args)
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr


def test_targets_with_discovery_and_no_credentials_exits_3_with_a_message(
    tmp_path: Path,
) -> None:
    # given AWS_REGION only (as docs/tuning.md shows), and no credentials anywhere
    variables = fake_aws_variables(tmp_path)
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "AWS_REGION": "eu-west-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": variables["AWS_CONFIG_FILE"],
        "AWS_SHARED_CREDENTIALS_FILE": variables["AWS_SHARED_CREDENTIALS_FILE"],
        "REAPER_DISCOVERY_TAG": "idle-reaper=enabled",
    }
    done = run_command([*REAPER, "targets"], timeout=60, env=env)
    assert done.returncode == 3
    assert "Traceback" not in done.stderr
    assert "credentials" in done.stderr.lower()


def test_demo_refuses_a_bad_threshold_before_starting_a_server() -> None:
    done = run_command([*REAPER, "demo", "--idle-seconds", "0"], timeout=30)
    assert done.returncode == 2
    assert "greater than 0" in done.stderr
    assert "Starting" not in done.stdout


def test_run_on_a_laptop_does_not_import_the_aws_package() -> None:
    # `reaper run` reads REAPER_DATABASE_URL through the settings both shells share
    probe = (
        "import sys\n"
        "from reaper.cli.main import main\n"
        "code = main(['run', '--dsn', 'postgresql://x@127.0.0.1:1/x', '--connect-timeout', '1',"
        " '--application-name', 'lambda:*'])\n"
        "assert code == 3, code\n"
        "print(sorted(m for m in sys.modules if m.startswith(('reaper.aws', 'boto'))))\n"
    )
    done = run_command([sys.executable, "-c", probe], timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
