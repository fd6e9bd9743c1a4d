"""`reaper targets [--json]`: the targets the function would act on, and why any is left alone.

The function's settings come from the environment, as for `reaper invoke`; the targets are
resolved by the handler's own code (`reaper.aws.targets.resolve_targets`), so with
REAPER_DISCOVERY_TAG set the RDS API is asked with the caller's AWS credentials and Region.
Nothing connects to a database, reads a secret or loads a policy.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from reaper.aws.credentials import login_summary
from reaper.aws.policy_source import describe_policy_source, parameter_source_name
from reaper.aws.targets import resolve_targets
from reaper.cli.render import printable, table
from reaper.pg.conninfo import ConnInfo
from reaper.settings import DEFAULT_PORT, load_lambda_settings

if TYPE_CHECKING:
    from reaper.aws.targets import FleetTarget
    from reaper.settings import LambdaSettings, TargetSpec


def targets_main(*, as_json: bool) -> int:
    """Print the targets (a table, or JSON); 0 when they could be listed.

    Raises:
        SettingsError: the settings are invalid.
        DiscoveryError: the RDS API could not be asked.
    """
    settings = load_lambda_settings()
    described = [describe_target(settings, target) for target in resolve_targets(settings)]
    document = {
        "discovery": (
            None
            if settings.discovery_tag is None
            else {"tag": str(settings.discovery_tag), "vpc_id": settings.discovery_vpc_id}
        ),
        "stack_policy": describe_policy_source(settings),
        "targets": described,
    }
    print(json.dumps(document, indent=2) if as_json else render_targets(document))
    return 0


def describe_target(settings: LambdaSettings, target: FleetTarget) -> dict[str, Any]:
    """One target as JSON-ready values: where, how it logs in, which policy, or why not."""
    spec = target.spec
    if spec is not None:
        host, port = _endpoint(settings, spec)
    elif target.instance is not None:
        host, port = target.instance.host, target.instance.port
    else:
        host, port = None, None
    return {
        "name": target.name,
        "origin": target.origin,
        "action": target.action,
        "reason": target.reason,
        "host": host,
        "port": port,
        "login": None if spec is None else login_summary(settings, spec),
        "policy": (
            None
            if spec is None
            else parameter_source_name(spec.policy_parameter)
            if spec.policy_parameter
            else f"stack policy ({describe_policy_source(settings)})"
        ),
        "instance": None if target.instance is None else target.instance.to_dict(),
    }


def render_targets(document: dict[str, Any]) -> str:
    """The targets as a table, then the reason of each one left alone."""
    discovery = document["discovery"]
    lines = [
        "discovery: "
        + (
            "off (REAPER_DISCOVERY_TAG unset)"
            if discovery is None
            else f"tag {printable(discovery['tag'])}"
            + (f" in {discovery['vpc_id']}" if discovery["vpc_id"] else " in every VPC")
        ),
        f"stack policy: {printable(document['stack_policy'])}",
        "",
    ]
    targets = document["targets"]
    if not targets:
        lines.append("no target")
        return "\n".join(lines)
    lines.append(
        table(
            ("target", "origin", "action", "endpoint", "login", "policy"),
            [
                (
                    t["name"],
                    t["origin"],
                    t["action"],
                    f"{t['host']}:{t['port']}" if t["host"] else "(from the secret)",
                    t["login"] or "-",
                    t["policy"] or "-",
                )
                for t in targets
            ],
        )
    )
    # Names and reasons come from RDS tags and instance data, the table's cells too.
    reasons = [
        f"  {printable(t['name'])}: {printable(t['reason'])}" for t in targets if t["reason"]
    ]
    if reasons:
        lines.extend(["", "left alone or failing:", *reasons])
    return "\n".join(lines)


def _endpoint(settings: LambdaSettings, spec: TargetSpec) -> tuple[str | None, int | None]:
    """Host and port as far as they are known without reading a secret."""
    dsn = spec.dsn.get_secret_value() if spec.dsn else settings.database_url_value()
    if dsn is not None and not (spec.secret_id or spec.iam_user):
        params = ConnInfo.from_dsn(dsn).params
        dsn_host = spec.host or params.get("host") or params.get("hostaddr") or "localhost"
        return dsn_host, int(spec.port or params.get("port") or DEFAULT_PORT)
    host = spec.host
    if host is None and (spec.iam_user or settings.iam_auth):
        host = settings.db_host
    if host is None:
        return None, spec.port
    return host, spec.port or settings.db_port or DEFAULT_PORT
