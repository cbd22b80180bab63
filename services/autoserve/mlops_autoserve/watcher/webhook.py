"""MLflow registry webhooks: verify, then use them only as a hint to reconcile now.

Signature (MLflow OSS): ``X-MLflow-Signature: v1,<base64 HMAC-SHA256(secret,
f"{delivery_id}.{timestamp}.{body}")>``, timestamp in Unix seconds. Deliveries are
fire-and-forget on MLflow's side, so polling stays the source of truth.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping

ALIAS_EVENTS = ("model_version_alias.created", "model_version_alias.deleted")
WEBHOOK_NAME = "mlops-autoserve"


def signature(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    signed = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def check_headers(headers: Mapping[str, str], max_age: float, now: float | None = None) -> str | None:
    """None when the signature headers are present, well-formed and fresh, else why not.

    Runs before the body is read: any malformed header is a rejection (401), never an error.
    """
    delivery_id = headers.get("X-MLflow-Delivery-Id", "")
    timestamp = headers.get("X-MLflow-Timestamp", "")
    given = headers.get("X-MLflow-Signature", "")
    if not (delivery_id and timestamp and given):
        return "missing X-MLflow-Delivery-Id, X-MLflow-Timestamp or X-MLflow-Signature"
    if len(delivery_id) > 200 or len(given) > 200:
        return "signature header too long"
    if not given.startswith("v1,"):
        return "X-MLflow-Signature is not a v1 signature"
    try:
        age = abs((now or time.time()) - int(timestamp))
    except ValueError:
        return "X-MLflow-Timestamp is not a Unix timestamp"
    if age > max_age:
        return f"timestamp is {age:.0f} s old (limit {max_age:.0f} s)"
    return None


def verify(secret: str, headers: Mapping[str, str], body: bytes, max_age: float, now: float | None = None) -> str | None:
    """None when the delivery is authentic and fresh, else the reason to reject it."""
    problem = check_headers(headers, max_age, now)
    if problem:
        return problem
    given = headers["X-MLflow-Signature"]
    expected = signature(secret, headers["X-MLflow-Delivery-Id"], headers["X-MLflow-Timestamp"], body)
    if not hmac.compare_digest(given.encode(errors="replace"), expected.encode()):
        return "signature does not match"
    return None


def register(tracking_uri: str, url: str, secret: str | None) -> str:
    """Create or update the autoserve webhook on the tracking server; returns its id."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    existing = [w for w in client.list_webhooks() if w.name == WEBHOOK_NAME]
    if existing:
        webhook = client.update_webhook(
            existing[0].webhook_id, url=url, events=list(ALIAS_EVENTS), secret=secret, status="ACTIVE"
        )
    else:
        webhook = client.create_webhook(WEBHOOK_NAME, url, list(ALIAS_EVENTS), secret=secret)
    return webhook.webhook_id
