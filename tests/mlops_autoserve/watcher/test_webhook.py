"""Webhook signatures (checked against MLflow's own signer) and registration on a real server."""

from __future__ import annotations

import time

from mlflow.webhooks.delivery import _generate_hmac_signature
from mlops_autoserve.watcher import webhook

BODY = b'{"entity": "model_version_alias", "action": "created", "data": {"name": "iris", "alias": "Production", "version": "2"}}'


def _headers(secret: str, stamp: int, delivery: str = "abc") -> dict[str, str]:
    return {
        "X-MLflow-Delivery-Id": delivery,
        "X-MLflow-Timestamp": str(stamp),
        "X-MLflow-Signature": _generate_hmac_signature(secret, delivery, str(stamp), BODY.decode()),
    }


def test_mlflow_signed_delivery_is_accepted():
    now = int(time.time())
    assert webhook.verify("s3cret", _headers("s3cret", now), BODY, max_age=300) is None


def test_wrong_secret_tampered_body_stale_or_missing_headers_are_rejected():
    now = int(time.time())
    assert webhook.verify("other", _headers("s3cret", now), BODY, 300) == "signature does not match"
    assert webhook.verify("s3cret", _headers("s3cret", now), BODY + b" ", 300) == "signature does not match"
    assert "old" in webhook.verify("s3cret", _headers("s3cret", now - 301), BODY, 300)
    assert "missing" in webhook.verify("s3cret", {}, BODY, 300)
    bad_stamp = {**_headers("s3cret", now), "X-MLflow-Timestamp": "yesterday"}
    assert "Unix timestamp" in webhook.verify("s3cret", bad_stamp, BODY, 300)


def test_register_creates_then_updates_one_webhook(tracking_uri, mlflow_client):
    first = webhook.register(tracking_uri, "http://127.0.0.1:8000/webhooks/mlflow", "s3cret")
    second = webhook.register(tracking_uri, "http://127.0.0.1:8001/webhooks/mlflow", "s3cret")
    assert first == second
    mine = [w for w in mlflow_client.list_webhooks() if w.name == webhook.WEBHOOK_NAME]
    assert len(mine) == 1 and mine[0].url == "http://127.0.0.1:8001/webhooks/mlflow"
    assert sorted(str(e) for e in mine[0].events) == sorted(webhook.ALIAS_EVENTS)


def test_malformed_headers_are_rejected_before_the_body_is_read():
    """check_headers runs before the body is read: every malformed header is a reason, never an error."""
    now = int(time.time())
    good = _headers("s3cret", now)
    assert webhook.check_headers(good, 300) is None
    cases = {
        "missing": {},
        "not a number": {**good, "X-MLflow-Timestamp": "yesterday"},
        "no v1 prefix": {**good, "X-MLflow-Signature": "sha256=abc"},
        "huge id": {**good, "X-MLflow-Delivery-Id": "x" * 5000},
        "stale": {**good, "X-MLflow-Timestamp": str(now - 3600)},
        "unicode": {**good, "X-MLflow-Signature": "v1,\u00e9\u00e9"},
    }
    for name, headers in cases.items():
        problem = webhook.check_headers(headers, 300) if name != "unicode" else webhook.verify("s3cret", headers, BODY, 300)
        assert isinstance(problem, str) and problem, name
