"""``mlops approve / block / unblock / whoami`` and ``mlops audit list``: governance from the shell."""

from __future__ import annotations

from datetime import datetime, timezone

import click

from mlops_toolkit import approvals, audit, governance
from mlops_toolkit.cli.common import (
    command,
    echo_json,
    echo_table,
    json_option,
    tracking_uri_option,
)
from mlops_toolkit.errors import ValidationError

version_option = click.option("--version", "-v", "version", required=True, type=click.IntRange(min=1), metavar="N",
                              help="The model version.")


@click.command("approve")
@tracking_uri_option()
@click.argument("model")
@version_option
@click.option("--reason", metavar="TEXT", help="Why (kept on the version and in the audit trail).")
def approve(model: str, version: int, reason: str | None) -> None:
    """Approve MODEL version N: aliases that require approval (policy, per environment) may take it."""
    click.echo(str(approvals.approve(model, version, reason)))


@click.command("block")
@tracking_uri_option()
@click.argument("model")
@version_option
@click.option("--reason", required=True, metavar="TEXT", help="Why it must not be deployed.")
def block(model: str, version: int, reason: str) -> None:
    """Block MODEL version N: no alias may take it; in prod it is neither served nor scored."""
    click.echo(str(approvals.block(model, version, reason)))


@click.command("unblock")
@tracking_uri_option()
@click.argument("model")
@version_option
@click.option("--reason", metavar="TEXT", help="Why it may be deployed again.")
def unblock(model: str, version: int, reason: str | None) -> None:
    """Lift a block on MODEL version N."""
    click.echo(str(approvals.unblock(model, version, reason)))


@click.command("whoami")
@json_option
def whoami(as_json: bool) -> None:
    """The acting user, their roles, the environment and the policy file in force."""
    policy = governance.load_policy()
    user = governance.acting_user()
    info = {"user": user, "roles": list(policy.roles(user)), "environment": governance.environment(),
            "policy": policy.source, "audit": audit.audit_uri()}
    if as_json:
        echo_json(info)
        return
    click.echo(f"{user} (roles: {', '.join(info['roles']) or 'none'}) in {info['environment']}; "
               f"policy: {policy.source}; audit: {info['audit'] or 'off'}")


@click.group("audit")
def audit_group() -> None:
    """The audit trail (MLOPS_AUDIT_URI: file:///dir or s3://bucket/prefix)."""


def _since(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"expected an ISO date or time like 2026-11-25 or 2026-11-25T14:00, got {value!r}")
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


@command(audit_group, "list")
@click.option("--since", callback=_since, metavar="WHEN", help="Only events at or after this ISO date/time (UTC).")
@click.option("--model", "-m", metavar="NAME", help="Only events about this model.")
@click.option("--action", metavar="ACTION", help="Only this action (alias.set) or family (alias).")
@json_option
def audit_list(since: datetime | None, model: str | None, action: str | None, as_json: bool) -> None:
    """Events oldest first: who did what, where, to which model and alias, and the outcome."""
    if action is not None and not action.strip():
        raise ValidationError("--action must not be empty")
    events = audit.list_events(since, model, action)
    if as_json:
        echo_json(events)
        return
    echo_table(["TIME", "USER", "ENV", "ACTION", "OUTCOME", "MODEL", "ALIAS", "VERSION", "REASON"],
               [(e.time, e.user, e.environment, e.action, e.outcome, e.model or "", e.alias or "", _versions(e),
                 (e.reason or "")[:80]) for e in events], "no audit events")


def _versions(event: audit.AuditEvent) -> str:
    if event.version is not None:
        return f"v{event.version}"
    if event.from_version is None and event.to_version is None:
        return ""
    before = f"v{event.from_version}" if event.from_version is not None else "-"
    after = f"v{event.to_version}" if event.to_version is not None else "-"
    return f"{before} -> {after}"
