"""Who is acting, in which environment, and whether the policy lets them.

Identity: the authenticated MLflow user when the toolkit talks to a server running MLflow's
auth app (``MLFLOW_TRACKING_USERNAME``: every request carries it and the server checks the
password, so a wrong one fails before anything moves), else ``MLOPS_USER``, else the login
name. Environment: ``MLOPS_ENVIRONMENT`` (dev, stage, prod; default dev).

Policy: a YAML file named by ``MLOPS_POLICY_FILE``. Without one, everything is allowed (dev
as before). With one::

    users: {alice: [data-scientist], bob: [approver, deployer]}
    environments:
      prod:
        require_approval: [Production]   # aliases that only take approved, unblocked versions
        allow:                           # action -> roles; an action not listed: anyone
          alias.set: [approver]
          approve: [approver]

Actions: ``alias.set``, ``alias.delete``, ``alias.rollback``, ``approve``, ``block``,
``unblock``, ``rollout.start``, ``rollout.abort``, ``shadow.set``,
``shadow.clear``, ``project.deploy``. A refusal is :class:`PolicyRefusal` (exit code 3), one
line naming the user, roles, action and environment, raised before anything moves.
"""

from __future__ import annotations

import functools
import getpass
import os
from dataclasses import dataclass, field
from pathlib import Path

from mlops_toolkit.errors import MlopsError, ValidationError

ENVIRONMENTS = ("dev", "stage", "prod")
ACTIONS = frozenset({
    "alias.set", "alias.delete", "alias.rollback", "approve", "block", "unblock", "rollout.start",
    "rollout.abort", "shadow.set", "shadow.clear", "project.deploy",
})


class PolicyRefusal(MlopsError, PermissionError):
    """The policy does not let this user do this here."""

    exit_code = 3


def acting_user() -> str:
    """The MLflow user the requests authenticate as, else MLOPS_USER, else the login name."""
    for variable in ("MLFLOW_TRACKING_USERNAME", "MLOPS_USER"):
        if os.environ.get(variable, "").strip():
            return os.environ[variable].strip()
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def environment() -> str:
    """MLOPS_ENVIRONMENT (dev when unset); an unknown name is a clear error, not dev."""
    name = os.environ.get("MLOPS_ENVIRONMENT", "dev").strip().lower() or "dev"
    if name not in ENVIRONMENTS:
        raise ValidationError(f"MLOPS_ENVIRONMENT must be one of {', '.join(ENVIRONMENTS)}, got {name!r}")
    return name


@dataclass(frozen=True)
class EnvironmentRules:
    allow: dict[str, tuple[str, ...]] = field(default_factory=dict)  # action -> roles
    require_approval: frozenset[str] = frozenset()  # aliases


@dataclass(frozen=True)
class Policy:
    users: dict[str, tuple[str, ...]] = field(default_factory=dict)
    environments: dict[str, EnvironmentRules] = field(default_factory=dict)
    source: str = "(no policy file: everything allowed)"

    def roles(self, user: str) -> tuple[str, ...]:
        return self.users.get(user, ())

    def rules(self, env: str) -> EnvironmentRules:
        return self.environments.get(env, EnvironmentRules())

    def allowed_roles(self, action: str, env: str) -> tuple[str, ...] | None:
        """The roles that may do ``action`` in ``env``; None when anyone may."""
        return self.rules(env).allow.get(action)

    def needs_approval(self, alias: str, env: str) -> bool:
        return alias in self.rules(env).require_approval


def load_policy(path: str | Path | None = None) -> Policy:
    """The policy of ``path`` or ``MLOPS_POLICY_FILE``; an empty policy when neither is set."""
    path = path or os.environ.get("MLOPS_POLICY_FILE") or None
    if path is None:
        return Policy()
    return _load(str(Path(path).expanduser().resolve()), _mtime(path))


@functools.lru_cache(maxsize=8)
def _load(path: str, mtime: float) -> Policy:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise ValidationError(f"cannot read the policy file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ValidationError(f"policy file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    return parse_policy(data, path)


def _mtime(path: str | Path) -> float:
    try:
        return Path(path).stat().st_mtime
    except OSError:
        return 0.0


def parse_policy(data: object, source: str = "(policy)") -> Policy:
    """Check the shape strictly: a typo in a policy must not silently allow everything."""
    if not isinstance(data, dict):
        raise ValidationError(f"{source}: the policy must be a mapping with 'users' and 'environments'")
    unknown = set(data) - {"users", "environments"}
    if unknown:
        raise ValidationError(f"{source}: unknown key(s) {', '.join(sorted(unknown))} (expected users, environments)")
    users = {}
    for user, roles in (data.get("users") or {}).items():
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise ValidationError(f"{source}: users.{user} must be a list of role names")
        users[str(user)] = tuple(roles)
    environments = {}
    for env, rules in (data.get("environments") or {}).items():
        if env not in ENVIRONMENTS:
            raise ValidationError(f"{source}: unknown environment {env!r} (expected {', '.join(ENVIRONMENTS)})")
        rules = rules or {}
        extra = set(rules) - {"allow", "require_approval"}
        if extra:
            raise ValidationError(f"{source}: environments.{env} has unknown key(s) {', '.join(sorted(extra))}")
        allow = {}
        for action, roles in (rules.get("allow") or {}).items():
            if action not in ACTIONS:
                raise ValidationError(f"{source}: unknown action {action!r} in environments.{env}.allow "
                                      f"(known: {', '.join(sorted(ACTIONS))})")
            if not isinstance(roles, list):
                raise ValidationError(f"{source}: environments.{env}.allow.{action} must be a list of roles")
            allow[action] = tuple(str(r) for r in roles)
        aliases = rules.get("require_approval") or []
        if not isinstance(aliases, list):
            raise ValidationError(f"{source}: environments.{env}.require_approval must be a list of aliases")
        environments[env] = EnvironmentRules(allow, frozenset(str(a) for a in aliases))
    return Policy(users, environments, source)


@dataclass(frozen=True)
class Decision:
    """Who asked for what where, and the roles that counted: what the audit trail records."""

    user: str
    roles: tuple[str, ...]
    action: str
    environment: str


def require(action: str, policy: Policy | None = None, *, in_environment: str | None = None,
            audit_as: str | None = None, **context: object) -> Decision:
    """Allow ``action`` for the acting user, or raise PolicyRefusal (and audit the refusal as
    ``audit_as`` or the action, with ``context``: model, alias, version...).

    ``in_environment``: the environment the action targets when it is not the one the
    command runs in (a project deploy names it); default MLOPS_ENVIRONMENT.
    """
    from mlops_toolkit import (
        audit,  # a refusal is an event too (audit imports this module)
    )

    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")  # a bug, not user input
    policy = policy or load_policy()
    user, env = acting_user(), in_environment or environment()
    roles = policy.roles(user)
    allowed = policy.allowed_roles(action, env)
    decision = Decision(user, roles, action, env)
    if allowed is not None and not set(roles) & set(allowed):
        message = (f"refused: {user} (roles: {', '.join(roles) or 'none'}) may not {action} in {env}; "
                   f"allowed roles: {', '.join(allowed) or 'none'} ({policy.source})")
        audit.record(audit_as or action, "refused", decision=decision, reason=message, **context)
        raise PolicyRefusal(message)
    return decision


__all__ = ["ACTIONS", "Decision", "Policy", "PolicyRefusal", "acting_user", "environment", "load_policy",
           "parse_policy", "require"]
