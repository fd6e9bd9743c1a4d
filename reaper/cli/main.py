"""The `reaper` command: flags -> policy and target -> the same pass as the Lambda -> rendering.

Exit codes: `reaper.errors.ExitCode`; each error class carries its own (`exit_code`), and
reaper/errors.py draws the tree with the code of each.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reaper import __version__, errors
from reaper.actions.policy_file import read_policy_file
from reaper.cli._output import reader_may_leave
from reaper.cli.invoke import DEFAULT_FUNCTION_NAME, DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT_SECONDS
from reaper.cli.render import printable
from reaper.core.budget import (
    DEFAULT_BUDGET_UTILIZATION,
    DEFAULT_NAME_TEMPLATE,
    DEFAULT_WINDOW_DAYS,
    MAX_WINDOW_DAYS,
    NameTemplate,
    budget_utilization,
)
from reaper.core.policy import (
    DEFAULT_IDLE_SECONDS,
    DEFAULT_MAX_TERMINATIONS,
    IDLE_STATES,
    one_rule_policy,
    policy_schema,
    render_policy,
)
from reaper.core.result import refusal_fixes
from reaper.core.tls import TLS_DOC
from reaper.errors import ExitCode
from reaper.pg.timeouts import (
    DEFAULT_TIMEOUTS,
    MAX_CONNECT_SECONDS,
    MAX_STATEMENT_MS,
    Timeouts,
)
from reaper.settings import lambda_variables

# `reaper observe`: a snapshot a minute sees most reuses of sessions idle a minute or more.
DEFAULT_OBSERVE_INTERVAL = 60.0

if TYPE_CHECKING:
    from collections.abc import Sequence

    from reaper.actions.run import PassOptions
    from reaper.core.policy import Policy
    from reaper.core.result import PassResult
    from reaper.pg.conninfo import ConnInfo


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code.

    An error prints one line on stderr; a command run with --json also prints it as a JSON
    document on stdout (`{"error": {"type", "message", "exit_code"}}`), so a script parses one
    shape whatever happened.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    with reader_may_leave():
        try:
            return int(args.handler(args))
        except errors.ReaperError as exc:
            # The message may quote the server ('role "..." does not exist') or a name.
            print(f"reaper: error: {printable(exc)}", file=sys.stderr)
            if getattr(args, "json", False):
                print_json(error_document(exc))
            return exit_code_for(exc)
        except KeyboardInterrupt:
            print("reaper: interrupted", file=sys.stderr)
            return ExitCode.INTERRUPTED


def exit_code_for(exc: errors.ReaperError) -> int:
    """The documented exit code for an error that stopped the command."""
    return int(exc.exit_code)


def error_document(exc: errors.ReaperError) -> dict[str, Any]:
    """The JSON a --json command prints when an error stopped it."""
    return {
        "error": {
            "type": type(exc).__name__,
            "message": str(exc),
            "exit_code": exit_code_for(exc),
        }
    }


def print_json(document: Any) -> None:
    """Print `document` as indented JSON."""
    print(json.dumps(document, indent=2, default=str))


def _exit_code_for_result(result: PassResult) -> int:
    """0 for a clean pass; ExitCode.UNSAFE when it stopped before terminating what it planned;
    ExitCode.REFUSED when a termination it wanted was refused."""
    if result.stopped_before_terminating is not None:
        return ExitCode.UNSAFE
    return ExitCode.REFUSED if result.counts.refused else ExitCode.OK


def _warn_about(result: PassResult) -> None:
    """What the reader must act on, on stderr (also with --json): the pass's warnings, why it
    stopped, and what fixes its refusals."""
    for warning in result.warnings:
        print(f"reaper: warning: {warning}", file=sys.stderr)
    if result.stopped_before_terminating is not None:
        print(
            f"reaper: error: the pass stopped before terminating: "
            f"{result.stopped_before_terminating}",
            file=sys.stderr,
        )
    fixes = refusal_fixes(result)
    if fixes:
        print(
            f"reaper: {result.counts.refused} termination(s) refused; fix: " + "; ".join(fixes),
            file=sys.stderr,
        )


def _function_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help_text: str,
    also_reads: str,
) -> argparse.ArgumentParser:
    """A command that reads the function's settings from the environment, as the function does;
    its help names every variable (derived from the settings model) and what else it reads."""
    return commands.add_parser(
        name,
        help=help_text,
        epilog="Reads the function's variables, as the Lambda function does: "
        + ", ".join(lambda_variables())
        + f"; {also_reads}",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reaper",
        description="Terminate idle PostgreSQL sessions left behind by serverless functions.",
        epilog="Exit codes: 0 done, 2 bad input, 3 target unreachable, 4 some terminations "
        "refused, 5 pass could not run safely or stopped before terminating, 6 database full, "
        "7 a doctor check failed, 8 the pass lock is held by a session that is not a reaper, "
        "1 internal error, 130 interrupted (Ctrl-C).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run one pass against a database")
    _add_connection_flags(run)
    _add_selection_flags(run)
    run.add_argument("--policy", type=Path, metavar="FILE", help="a policy document (JSON)")
    run.add_argument("--dry-run", action="store_true", help="plan and report; terminate nothing")
    run.add_argument("--json", action="store_true", help="print the result as JSON")
    run.add_argument(
        "--verbose", action="store_true", help="list every session, also the uninteresting ones"
    )
    run.add_argument(
        "--history",
        type=Path,
        metavar="FILE",
        help="learn how idle sessions are reused between runs, in FILE (created if missing); "
        "rules with `learned` use it",
    )
    run.set_defaults(handler=_command_run)

    doctor = commands.add_parser(
        "doctor", help="check the reaper's role and server; with a policy, what it would do now"
    )
    _add_connection_flags(doctor)
    _add_selection_flags(doctor)
    doctor.add_argument("--policy", type=Path, metavar="FILE", help="a policy document (JSON)")
    doctor.add_argument("--json", action="store_true", help="print the checks as JSON")
    doctor.add_argument(
        "--budget",
        action="store_true",
        help="also check the connection budget (reads the Lambda and CloudWatch APIs)",
    )
    _add_budget_flags(doctor)
    doctor.add_argument(
        "--history",
        type=Path,
        metavar="FILE",
        help="the reuse history rules with `learned` use (see reaper run --history)",
    )
    doctor.set_defaults(handler=_command_doctor)

    observe = commands.add_parser(
        "observe",
        help="learn how each application's idle sessions are reused; terminates nothing",
    )
    _add_connection_flags(observe)
    observe.add_argument(
        "--history", type=Path, required=True, metavar="FILE", help="the history (created)"
    )
    observe.add_argument(
        "--interval",
        type=float,
        default=DEFAULT_OBSERVE_INTERVAL,
        metavar="S",
        help=f"seconds between snapshots (default {DEFAULT_OBSERVE_INTERVAL:g})",
    )
    observe.add_argument(
        "--duration",
        type=float,
        required=True,
        metavar="D",
        help="seconds to observe for (one snapshot at least)",
    )
    observe.add_argument("--json", action="store_true", help="print the history's advice as JSON")
    observe.set_defaults(handler=_command_observe)

    advise = commands.add_parser(
        "advise",
        help="per application: reuses seen, idle gaps before reuse, and thresholds to use",
    )
    advise.add_argument(
        "--history", type=Path, required=True, metavar="FILE", help="a history file"
    )
    _add_selection_flags(advise)
    advise.add_argument(
        "--policy", type=Path, metavar="FILE", help="the policy to compare with (JSON)"
    )
    advise.add_argument("--json", action="store_true", help="print the advice as JSON")
    advise.set_defaults(handler=_command_advise)

    budget = commands.add_parser(
        "budget",
        help="each Lambda function's concurrency against the database's slots, and reserves "
        "that fit",
        epilog="Reads the Lambda and CloudWatch APIs with the usual AWS credential variables "
        "and AWS_REGION (or AWS_DEFAULT_REGION); changes nothing (see docs/budget.md).",
    )
    _add_connection_flags(budget)
    budget.add_argument(
        "--policy",
        type=Path,
        metavar="FILE",
        help="a policy document: its target_utilization leaves the headroom",
    )
    budget.add_argument(
        "--target-utilization",
        type=float,
        metavar="F",
        help="share of the usable slots the proposed reserves may fill (default: the "
        f"policy's target_utilization, else {DEFAULT_BUDGET_UTILIZATION:g})",
    )
    _add_budget_flags(budget)
    budget.add_argument("--json", action="store_true", help="print the budget as JSON")
    budget.set_defaults(handler=_command_budget)

    report = commands.add_parser("report", help="census of connections by application")
    _add_connection_flags(report)
    report.add_argument("--json", action="store_true", help="print the census as JSON")
    report.set_defaults(handler=_command_report)

    policy = commands.add_parser("policy", help="check a policy document or print its schema")
    policy_commands = policy.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    check = policy_commands.add_parser("check", help="validate FILE and print it normalised")
    check.add_argument("file", type=Path, metavar="FILE")
    check.set_defaults(handler=_command_policy_check)
    schema = policy_commands.add_parser("schema", help="print the policy's JSON Schema")
    schema.set_defaults(handler=_command_policy_schema)

    invoke = _function_command(
        commands,
        "invoke",
        "run the Lambda handler locally on an event file, as `sam local invoke -e` would",
        "POWERTOOLS_SERVICE_NAME, POWERTOOLS_METRICS_NAMESPACE, POWERTOOLS_LOG_LEVEL; "
        "AWS_REGION (or AWS_DEFAULT_REGION) and the usual AWS credential variables.",
    )
    invoke.add_argument("event_file", type=Path, metavar="EVENT_FILE")
    invoke.add_argument(
        "--timeout",
        type=int,
        default=DEFAULT_TIMEOUT_SECONDS,
        metavar="S",
        help=f"the function's timeout (default {DEFAULT_TIMEOUT_SECONDS})",
    )
    invoke.add_argument(
        "--memory",
        type=int,
        default=DEFAULT_MEMORY_MB,
        metavar="MB",
        help=f"the function's memory (default {DEFAULT_MEMORY_MB})",
    )
    invoke.add_argument(
        "--function-name",
        default=DEFAULT_FUNCTION_NAME,
        metavar="NAME",
        help=f"default {DEFAULT_FUNCTION_NAME}",
    )
    invoke.set_defaults(handler=_command_invoke)

    targets = _function_command(
        commands,
        "targets",
        "list the targets the Lambda function would act on, and any it skips",
        "with REAPER_DISCOVERY_TAG, AWS_REGION (or AWS_DEFAULT_REGION) and the usual AWS "
        "credential variables for the RDS API.",
    )
    targets.add_argument("--json", action="store_true", help="print the targets as JSON")
    targets.set_defaults(handler=_command_targets)

    demo = commands.add_parser("demo", help="show the reaper on a throwaway PostgreSQL")
    demo.add_argument(
        "--idle-seconds", type=float, default=3.0, help="threshold used by the demo (default 3)"
    )
    demo.set_defaults(handler=_command_demo)
    return parser


def _add_selection_flags(parser: argparse.ArgumentParser) -> None:
    selection = parser.add_argument_group("selection (or --policy)")
    selection.add_argument(
        "--application-name",
        action="append",
        metavar="GLOB",
        help="application_name pattern to reap, e.g. 'lambda:*' (repeatable)",
    )
    selection.add_argument(
        "--idle-seconds",
        type=float,
        default=DEFAULT_IDLE_SECONDS,
        metavar="N",
        help=f"terminate sessions idle longer than this (default {DEFAULT_IDLE_SECONDS:g})",
    )
    selection.add_argument(
        "--state",
        action="append",
        choices=IDLE_STATES,
        help="session state to reap (repeatable; default: idle)",
    )
    selection.add_argument(
        "--exclude-client-address",
        action="append",
        metavar="CIDR",
        help="never terminate sessions from this block, e.g. a connection pooler's address "
        "10.0.3.7/32 (repeatable; see docs/poolers.md)",
    )
    selection.add_argument(
        "--max-terminations",
        type=int,
        default=DEFAULT_MAX_TERMINATIONS,
        metavar="N",
        help=f"cap per pass (default {DEFAULT_MAX_TERMINATIONS})",
    )
    selection.add_argument(
        "--allow-short-thresholds",
        action="store_true",
        help="accept --idle-seconds below the 60-second floor",
    )


def _add_budget_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--name-template",
        default=DEFAULT_NAME_TEMPLATE,
        metavar="TEMPLATE",
        help="how functions name their sessions (default %(default)s)",
    )
    parser.add_argument(
        "--window-days",
        type=int,
        default=DEFAULT_WINDOW_DAYS,
        metavar="N",
        help="days of ConcurrentExecutions peaks to weigh (default %(default)s, at most 63)",
    )


def _add_connection_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dsn",
        metavar="DSN",
        help="libpq URI or key=value string (default: $REAPER_DATABASE_URL); never printed",
    )
    connect_seconds = DEFAULT_TIMEOUTS.connect_seconds
    statement_ms = DEFAULT_TIMEOUTS.statement_ms
    parser.add_argument(
        "--connect-timeout",
        type=int,
        default=connect_seconds,
        metavar="S",
        help=f"seconds (default {connect_seconds})",
    )
    parser.add_argument(
        "--statement-timeout",
        type=int,
        default=statement_ms,
        metavar="MS",
        help=f"milliseconds per statement (default {statement_ms})",
    )


def _command_run(args: argparse.Namespace) -> int:
    from reaper.actions.run import run_observed_pass, run_pass
    from reaper.cli.render import render_pass

    policy = _policy_from_args(args)
    target = _target_from_args(args)
    _warn_if_unverified(target)
    options: PassOptions = {"timeouts": _timeouts_from_args(args), "force_dry_run": args.dry_run}
    if args.history is None:
        result = run_pass(target, policy, **options)
    else:
        from reaper.actions.observe import read_history_file, write_history_file

        history = read_history_file(args.history, target=target.name)
        observed = run_observed_pass(target, policy, history, **options)
        write_history_file(args.history, observed.history, target=target.name)
        result = observed.result
    if args.json:
        print_json(result.to_dict())
    else:
        print(render_pass(result, verbose=args.verbose))
    _warn_about(result)
    return _exit_code_for_result(result)


def _command_doctor(args: argparse.Namespace) -> int:
    from reaper.cli.doctor import doctor_main

    policy = _policy_if_selected(args)
    target = _target_from_args(args)
    history = None
    if args.history is not None:
        from reaper.actions.observe import read_history_file

        history = read_history_file(args.history, target=target.name)
    snapshot_checks = None
    if args.budget:
        from reaper.cli.budget import doctor_budget_checks

        snapshot_checks = doctor_budget_checks(
            target,
            names=NameTemplate(args.name_template),
            target_utilization=budget_utilization(policy),
            window_days=_window_days(args),
        )
    report = doctor_main(
        target,
        policy,
        _timeouts_from_args(args),
        as_json=args.json,
        snapshot_checks=snapshot_checks,
        history=history,
    )
    return ExitCode.CHECKS_FAILED if report.failed else ExitCode.OK


def _command_budget(args: argparse.Namespace) -> int:
    from reaper.cli.budget import budget_main

    target_utilization = args.target_utilization
    if target_utilization is None:
        policy = read_policy_file(args.policy) if args.policy is not None else None
        target_utilization = budget_utilization(policy)
    elif not 0 < target_utilization <= 1:
        raise errors.SettingsError("--target-utilization must be above 0 and at most 1")
    budget_main(
        _target_from_args(args),
        _timeouts_from_args(args),
        names=NameTemplate(args.name_template),
        target_utilization=target_utilization,
        window_days=_window_days(args),
        as_json=args.json,
    )
    return ExitCode.OK


def _window_days(args: argparse.Namespace) -> int:
    if not 1 <= args.window_days <= MAX_WINDOW_DAYS:
        raise errors.SettingsError(f"--window-days must be between 1 and {MAX_WINDOW_DAYS}")
    return int(args.window_days)


def _command_report(args: argparse.Namespace) -> int:
    from reaper.actions.report import take_report
    from reaper.cli.render import render_census

    target = _target_from_args(args)
    _warn_if_unverified(target)
    report = take_report(target, timeouts=_timeouts_from_args(args))
    if args.json:
        print_json(report.to_dict())
    else:
        print(render_census(report.census, report.target))
    return ExitCode.OK


def _command_observe(args: argparse.Namespace) -> int:
    from reaper.cli.learning import observe_main

    if not (args.interval > 0 and args.duration > 0):
        raise errors.SettingsError("--interval and --duration must be positive")
    observe_main(
        _target_from_args(args),
        args.history,
        interval_seconds=args.interval,
        duration_seconds=args.duration,
        timeouts=_timeouts_from_args(args),
        as_json=args.json,
    )
    return ExitCode.OK


def _command_advise(args: argparse.Namespace) -> int:
    from reaper.cli.learning import advise_main

    advise_main(args.history, _policy_if_selected(args), as_json=args.json)
    return ExitCode.OK


def _command_policy_check(args: argparse.Namespace) -> int:
    print(render_policy(read_policy_file(args.file)))
    return ExitCode.OK


def _command_policy_schema(_args: argparse.Namespace) -> int:
    print_json(policy_schema())
    return ExitCode.OK


def _command_invoke(args: argparse.Namespace) -> int:
    from reaper.cli.invoke import invoke_main

    return invoke_main(
        args.event_file,
        function_name=args.function_name,
        timeout_seconds=args.timeout,
        memory_mb=args.memory,
    )


def _command_targets(args: argparse.Namespace) -> int:
    from reaper.cli.targets import targets_main

    return targets_main(as_json=args.json)


def _command_demo(args: argparse.Namespace) -> int:
    from reaper.cli.demo import run_demo

    return run_demo(idle_seconds=args.idle_seconds)


def _policy_from_args(args: argparse.Namespace) -> Policy:
    if args.policy is not None:
        if args.application_name or args.state or args.exclude_client_address:
            raise errors.SettingsError(
                "--policy replaces the selection flags; drop --application-name/--state/"
                "--exclude-client-address or put them in the policy document"
            )
        return read_policy_file(args.policy)
    if not args.application_name:
        raise errors.SettingsError(
            "say what to reap: --application-name GLOB (repeatable) or --policy FILE"
        )
    return one_rule_policy(
        args.application_name,
        idle_seconds=args.idle_seconds,
        states=args.state or ["idle"],
        source="command-line flags",
        max_terminations=args.max_terminations,
        allow_short_thresholds=args.allow_short_thresholds,
        exclude={"client_addresses": args.exclude_client_address or []},
    )


def _policy_if_selected(args: argparse.Namespace) -> Policy | None:
    """The policy of the selection flags or --policy, for the commands where it is optional
    (doctor, advise); None when neither is given."""
    selected = args.policy or args.application_name or args.exclude_client_address
    return _policy_from_args(args) if selected else None


def _target_from_args(args: argparse.Namespace) -> ConnInfo:
    from reaper.pg.conninfo import ConnInfo
    from reaper.settings import LocalSettings, unknown_variable_hint

    dsn = args.dsn or LocalSettings().database_url_value()
    if not dsn:
        raise errors.SettingsError(
            "no database given: pass --dsn or set REAPER_DATABASE_URL"
            + unknown_variable_hint("REAPER_DATABASE_URL")
        )
    return ConnInfo.from_dsn(dsn)


def _warn_if_unverified(target: ConnInfo) -> None:
    """Say on stderr when the DSN lets the connection leave the machine unverified (a DSN
    naming no sslmode is verified by default: this is one that asked for less)."""
    if target.unverified_remote:
        print(
            f"reaper: warning: {target.endpoint}: sslmode={target.sslmode} does not verify the "
            "server's certificate, so a server posing as it would receive the password. Leave "
            "sslmode out of the DSN (a remote server is then verified against the RDS CA bundle) "
            f"or set sslmode=verify-full with its sslrootcert ({TLS_DOC})",
            file=sys.stderr,
        )


def _timeouts_from_args(args: argparse.Namespace) -> Timeouts:
    limits = (
        ("--connect-timeout", args.connect_timeout, MAX_CONNECT_SECONDS, "seconds"),
        ("--statement-timeout", args.statement_timeout, MAX_STATEMENT_MS, "milliseconds"),
    )
    for flag, value, most, unit in limits:
        if not 1 <= value <= most:
            raise errors.SettingsError(f"{flag} must be from 1 to {most} {unit}; got {value}")
    return Timeouts(connect_seconds=args.connect_timeout, statement_ms=args.statement_timeout)
