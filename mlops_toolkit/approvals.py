"""Approvals and blocks on model versions, and the check every alias move makes against them.

A version's governance lives in its own registry tags, so the MLflow UI, every notebook,
the batch jobs and the serving watcher read the same state:

* ``mlops.owner``, ``mlops.environment``, ``mlops.data_hash``: written when the toolkit
  logs the model (who, where, on which training data);
* ``mlops.approval_state`` (``pending`` / ``approved``), ``mlops.approved_by``,
  ``mlops.approved_at``, ``mlops.approval_reason``: ``mlops approve``;
* ``mlops.deployment_blocked`` (``true``), ``mlops.blocked_by``, ``mlops.blocked_reason``:
  ``mlops block`` (``unblock`` removes them).

A blocked version takes no alias in any environment. An alias the policy lists under
``require_approval`` for this environment takes only approved versions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from mlops_toolkit import audit
from mlops_toolkit.config import registry, require_name, resolve_model_name
from mlops_toolkit.errors import ValidationError
from mlops_toolkit.governance import (
    Decision,
    Policy,
    PolicyRefusal,
    load_policy,
    require,
)
from mlops_toolkit.tags import MODEL_VERSION_TAG_MAX, fit

if TYPE_CHECKING:
    from mlflow import MlflowClient

OWNER_TAG = "mlops.owner"
ENVIRONMENT_TAG = "mlops.environment"
DATA_HASH_TAG = "mlops.data_hash"
APPROVAL_STATE_TAG = "mlops.approval_state"
APPROVED_BY_TAG = "mlops.approved_by"
APPROVED_AT_TAG = "mlops.approved_at"
APPROVAL_REASON_TAG = "mlops.approval_reason"
BLOCKED_TAG = "mlops.deployment_blocked"
BLOCKED_BY_TAG = "mlops.blocked_by"
BLOCKED_REASON_TAG = "mlops.blocked_reason"
PENDING, APPROVED = "pending", "approved"


@dataclass(frozen=True)
class VersionGovernance:
    model: str
    version: int
    approval_state: str = PENDING
    approved_by: str | None = None
    approved_at: str | None = None
    blocked: bool = False
    blocked_reason: str | None = None
    owner: str | None = None
    environment: str | None = None
    data_hash: str | None = None

    def __str__(self) -> str:
        state = "blocked" if self.blocked else self.approval_state
        by = f" by {self.approved_by}" if self.approval_state == APPROVED and self.approved_by else ""
        why = f": {self.blocked_reason}" if self.blocked and self.blocked_reason else ""
        return f"{self.model} v{self.version}: {state}{by}{why}"


def governance_of(client: MlflowClient, model: str, version: int) -> VersionGovernance:
    tags = client.get_model_version(model, str(version)).tags or {}
    return VersionGovernance(
        model, int(version), tags.get(APPROVAL_STATE_TAG, PENDING), tags.get(APPROVED_BY_TAG),
        tags.get(APPROVED_AT_TAG), tags.get(BLOCKED_TAG) == "true", tags.get(BLOCKED_REASON_TAG),
        tags.get(OWNER_TAG), tags.get(ENVIRONMENT_TAG), tags.get(DATA_HASH_TAG),
    )


def why_not_deployable(state: VersionGovernance, alias: str, environment: str,
                       policy: Policy | None = None) -> str | None:
    """Why ``state``'s version may not take ``alias`` here (None: it may)."""
    policy = policy or load_policy()
    if state.blocked:
        return (f"{state.model} v{state.version} is blocked ({state.blocked_reason or 'no reason given'}); "
                f"`mlops unblock {state.model} --version {state.version}` first")
    if policy.needs_approval(alias, environment) and state.approval_state != APPROVED:
        return (f"{state.model}@{alias} in {environment} takes approved versions only and v{state.version} is "
                f"{state.approval_state}; `mlops approve {state.model} --version {state.version}` first")
    return None


def serving_refusal(approved: bool, blocked: bool, model: str, version: int) -> str | None:
    """In prod a version is served (and scored) only when it is approved and not blocked."""
    if blocked:
        return f"v{version} is blocked in prod (mlops unblock {model} --version {version})"
    if not approved:
        return f"v{version} is not approved for prod (mlops approve {model} --version {version})"
    return None


def check_servable(client: MlflowClient, model: str, version: int, environment: str) -> None:
    """For batch scoring: in prod, raise PolicyRefusal unless ``version`` is approved and unblocked."""
    if environment != "prod":
        return
    state = governance_of(client, model, version)
    reason = serving_refusal(state.approval_state == APPROVED, state.blocked, model, version)
    if reason is not None:
        raise PolicyRefusal(f"refused: {model} {reason}")


def check_deployable(client: MlflowClient, model: str, alias: str, version: int, decision: Decision) -> None:
    """Raise PolicyRefusal (exit 3) when ``version`` may not take ``alias``: before anything moves."""
    reason = why_not_deployable(governance_of(client, model, version), alias, decision.environment)
    if reason is not None:
        audit.record(decision.action, "refused", decision=decision, model=model, alias=alias, to_version=version,
                     reason=reason)
        raise PolicyRefusal(f"refused: {reason}")


def approve(model: str | None, version: int | str, reason: str | None = None) -> VersionGovernance:
    """Mark ``version`` approved (by the acting user, now): prod aliases that need it may take it."""
    model, version = resolve_model_name(model), _version(version)
    decision = require("approve", model=model, version=version)
    with registry() as client:
        state = governance_of(client, model, version)
        if state.blocked:
            raise ValidationError(f"{model} v{version} is blocked ({state.blocked_reason}); unblock it before "
                                  "approving")
        audit.record("approve", decision=decision, strict=decision.environment == "prod", model=model,
                     version=version, reason=reason)
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        for key, value in ((APPROVED_BY_TAG, decision.user), (APPROVED_AT_TAG, stamp),
                           (APPROVAL_REASON_TAG, fit(reason or "", MODEL_VERSION_TAG_MAX)),
                           (APPROVAL_STATE_TAG, APPROVED)):  # the state last: approved means complete
            client.set_model_version_tag(model, str(version), key, value)
        return governance_of(client, model, version)


def block(model: str | None, version: int | str, reason: str) -> VersionGovernance:
    """Stop ``version`` from taking any alias (and from being served or scored in prod)."""
    model, version = resolve_model_name(model), _version(version)
    reason = require_name(reason, "reason")
    decision = require("block", model=model, version=version)
    with registry() as client:
        governance_of(client, model, version)  # NotFound before anything is written
        audit.record("block", decision=decision, strict=decision.environment == "prod", model=model,
                     version=version, reason=reason)
        client.set_model_version_tag(model, str(version), BLOCKED_BY_TAG, decision.user)
        client.set_model_version_tag(model, str(version), BLOCKED_REASON_TAG, fit(reason, MODEL_VERSION_TAG_MAX))
        client.set_model_version_tag(model, str(version), BLOCKED_TAG, "true")
        return governance_of(client, model, version)


def unblock(model: str | None, version: int | str, reason: str | None = None) -> VersionGovernance:
    model, version = resolve_model_name(model), _version(version)
    decision = require("unblock", model=model, version=version)
    with registry() as client:
        state = governance_of(client, model, version)
        if not state.blocked:
            return state
        audit.record("unblock", decision=decision, strict=decision.environment == "prod", model=model,
                     version=version, reason=reason)
        client.delete_model_version_tag(model, str(version), BLOCKED_TAG)
        for key in (BLOCKED_BY_TAG, BLOCKED_REASON_TAG):
            client.delete_model_version_tag(model, str(version), key)
        return governance_of(client, model, version)


def version_governance(model: str | None, version: int | str) -> VersionGovernance:
    model, version = resolve_model_name(model), _version(version)
    with registry() as client:
        return governance_of(client, model, version)


def _version(version: int | str) -> int:
    try:
        number = int(version)
    except (TypeError, ValueError):
        raise ValidationError(f"version must be a number, got {version!r}") from None
    if number < 1:
        raise ValidationError(f"version must be >= 1, got {number}")
    return number


__all__ = ["APPROVED", "PENDING", "VersionGovernance", "approve", "block", "check_deployable", "check_servable",
           "governance_of", "serving_refusal", "unblock", "version_governance", "why_not_deployable"]
