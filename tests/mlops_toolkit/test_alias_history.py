"""The alias history on the backend production runs (PostgreSQL in CI): limits, concurrency,
legacy and damaged entries. See mlops_toolkit/aliases.py for the design."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

import mlops_toolkit as mt
from mlops_toolkit import aliases
from mlops_toolkit.tags import REGISTERED_MODEL_TAG_MAX

WEEKLY_REASON = "weekly retrain gate: val_f1 improved from 0.9412 to 0.9538 on 1,204 validation rows; " * 2


def _event_tags(client, model: str, alias: str) -> dict[str, str]:
    tags = client.get_registered_model(model).tags
    return {k: v for k, v in tags.items() if k.startswith(f"mlops.alias_event.{alias}.")}


def test_200_moves_keep_the_newest_100_and_every_value_fits_postgres(make_model, mlflow_client):
    """Before the per-event history, the 33rd move overflowed VARCHAR(5000) on PostgreSQL.
    The length check below also fails on SQLite, which does not enforce VARCHAR lengths."""
    model = make_model(versions=3)
    targets = [1 + i % 3 for i in range(200)]
    for target in targets:
        change = mt.set_alias(model, "Production", target, reason=WEEKLY_REASON)
        assert change.action == "set" and change.to_version == target
    assert mt.get_alias(model, "Production").version == targets[-1]

    stored = mlflow_client.get_registered_model(model).tags
    assert max(len(v) for v in stored.values()) <= REGISTERED_MODEL_TAG_MAX
    events = mt.alias_history(model, "Production")
    assert len(events) == aliases.HISTORY_LIMIT == 100
    assert [e.to_version for e in events] == targets[-100:]
    assert [e.from_version for e in events] == targets[-101:-1]
    assert [e.id for e in events] == sorted(e.id for e in events)

    for expected_from, expected_to in [(targets[-1], targets[-2]), (targets[-2], targets[-3]), (targets[-3], targets[-4])]:
        change = mt.rollback_alias(model, "Production")
        assert (change.from_version, change.to_version) == (expected_from, expected_to)
    assert mt.get_alias(model, "Production").version == targets[-4]


_WORKER = """
import sys, time
import mlops_toolkit as mt
model, alias, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
time.sleep(max(0.0, start - time.time()))
for version in sys.argv[4:]:
    print(mt.set_alias(model, alias, int(version), reason="concurrent"), flush=True)
"""


def test_eight_concurrent_writers_lose_no_event(make_model, tracking_uri):
    """8 processes move two aliases of one model at once; every printed move is recorded."""
    model = make_model(versions=4)
    start = time.time() + 6  # every process imports mlflow first, then they start together
    plans = [("Production" if i % 2 else "challenger", [str(1 + (i + k) % 4) for k in range(5)]) for i in range(8)]
    procs = [
        subprocess.Popen([sys.executable, "-c", _WORKER, model, alias, str(start), *versions],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri})
        for alias, versions in plans
    ]
    printed: dict[str, list[tuple[str, str]]] = {"Production": [], "challenger": []}
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        for line in out.splitlines():
            head, move = line.split(": ")
            alias = head.split("@")[1]
            before, after = move.split(" -> ")
            printed[alias].append((before, after.split(" ")[0]))
    total = 0
    for alias, moves in printed.items():
        recorded = [(f"v{e.from_version}" if e.from_version else "none", f"v{e.to_version}")
                    for e in mt.alias_history(model, alias)]
        real_moves = [m for m in moves if m[0] != m[1]]  # "(unchanged)" moves are not events
        for move in real_moves:
            assert move in recorded, (alias, move, recorded)
            recorded.remove(move)
        assert recorded == [], f"events no process printed: {recorded}"
        total += len(real_moves)
    assert total >= 10, "too few real moves to say anything about concurrency"


def test_writers_racing_to_create_the_same_new_alias_all_succeed(make_model):
    """MLflow creates an alias as select-then-insert: on PostgreSQL the loser of that race
    failed with UniqueViolation on registered_model_alias_pk (seen in CI). Every writer
    must succeed and the alias must end on one of the versions they set."""
    model = make_model(versions=4)
    for round_ in range(4):
        alias = f"race{round_}"
        barrier = threading.Barrier(8)
        results: list[object] = [None] * 8

        def move(i: int) -> None:
            barrier.wait()
            try:
                results[i] = mt.set_alias(model, alias, 1 + i % 4)
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                results[i] = exc

        threads = [threading.Thread(target=move, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        errors = [r for r in results if not isinstance(r, mt.AliasChange)]
        assert errors == [], errors
        assert mt.get_alias(model, alias).version in {1, 2, 3, 4}


def test_corrupt_entries_and_an_oversized_reason_warn_in_one_line(make_model, mlflow_client, mlops_script):
    model = make_model(versions=2)
    mt.set_alias(model, "Production", 1)
    mlflow_client.set_registered_model_tag(model, "mlops.alias_event.Production.00000000000000000001-handedit", "{oops")
    mlflow_client.set_registered_model_tag(
        model, "mlops.alias_event.Production.00000000000000000002-future",
        json.dumps({"format": 99, "alias": "Production", "action": "teleport"}))
    result = mlops_script("alias", "set", "Production", "-m", model, "-v", "2", "--reason", "x" * 20_000)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{model}@Production: v1 -> v2"

    history = mlops_script("alias", "history", "Production", "-m", model)
    assert history.returncode == 0, history.stderr
    assert [line.split()[1:4] for line in history.stdout.splitlines()[1:]] == [["set", "-", "v1"], ["set", "v1", "v2"]]
    warnings = sorted(line for line in history.stderr.splitlines() if line.strip())
    assert len(warnings) == 2 and "Traceback" not in history.stderr, history.stderr
    assert "handedit" in warnings[0] and "future" in warnings[1] and "newer toolkit" in warnings[1]

    last = mt.alias_history(model, "Production")[-1]
    assert (last.from_version, last.to_version) == (1, 2)
    assert len(last.reason) <= aliases.REASON_MAX_CHARS and last.reason.endswith("chars]")
    assert "...[cut 19" in last.reason
    assert mt.rollback_alias(model, "Production").to_version == 1


def test_legacy_one_list_history_is_read_then_migrated(make_model, mlflow_client):
    model = make_model(versions=3)
    mlflow_client.set_registered_model_alias(model, "Production", "2")
    legacy = [
        {"action": "set", "from_version": None, "to_version": 1, "user": "ann",
         "timestamp": "2026-01-05T10:00:00.000+00:00", "reason": "first"},
        {"action": "set", "from_version": 1, "to_version": 2, "user": "ann",
         "timestamp": "2026-01-12T10:00:00.000+00:00", "reason": None},
        {"action": "set", "from_version": 2, "to_version": 1, "user": "bob",
         "timestamp": "2026-01-13T10:00:00.000+00:00", "reason": None},
        {"action": "rollback", "from_version": 1, "to_version": 2, "user": "bob",
         "timestamp": "2026-01-13T11:00:00.000+00:00", "reason": None},
    ]
    mlflow_client.set_registered_model_tag(model, "mlops.alias_history.Production", json.dumps(legacy))
    assert [(e.user, e.to_version) for e in mt.alias_history(model, "Production")] == [
        ("ann", 1), ("ann", 2), ("bob", 1), ("bob", 2)]

    mt.set_alias(model, "Production", 3)
    tags = mlflow_client.get_registered_model(model).tags
    assert "mlops.alias_history.Production" not in tags
    assert len(_event_tags(mlflow_client, model, "Production")) == 5
    assert [e.to_version for e in mt.alias_history(model, "Production")] == [1, 2, 1, 2, 3]
    assert mt.rollback_alias(model, "Production").to_version == 2  # undoes v2 -> v3
    assert mt.rollback_alias(model, "Production").to_version == 1  # the legacy rollback already undid 2 -> 1


def test_a_rollback_recorded_twice_by_concurrent_writers_counts_once(make_model, mlflow_client):
    model = make_model(versions=3)
    for version in (1, 2, 3):
        mt.set_alias(model, "Production", version)
    mt.rollback_alias(model, "Production")  # v3 -> v2
    # A second process rolled back at the same moment: same event undone, its own record.
    key, raw = max(_event_tags(mlflow_client, model, "Production").items())
    assert json.loads(raw)["action"] == "rollback"
    mlflow_client.set_registered_model_tag(model, key[:-8] + "twin0000", raw)
    change = mt.rollback_alias(model, "Production")
    assert (change.from_version, change.to_version) == (2, 1)


def test_a_failed_move_takes_its_event_back(make_model, mlflow_client):
    model = make_model(versions=2)
    change = aliases.AliasChange(model, "Production", None, 2, "set")

    def move_fails() -> None:  # the server refuses the move (v9 does not exist)
        mlflow_client.set_registered_model_alias(model, "Production", "9")

    with pytest.raises(Exception):
        aliases._move_with_record(mlflow_client, change, "never happened", {}, move_fails)
    assert _event_tags(mlflow_client, model, "Production") == {}
    assert mt.alias_history(model, "Production") == []


def test_long_and_unicode_alias_names_get_hashed_keys(make_model, mlflow_client):
    model = make_model(versions=2)
    long_alias = "a" * 240
    for alias in (long_alias, "produção"):
        mt.set_alias(model, alias, 1)
        mt.set_alias(model, alias, 2)
        assert [(e.from_version, e.to_version) for e in mt.alias_history(model, alias)] == [(None, 1), (1, 2)]
    assert all(len(k) <= 250 for k in mlflow_client.get_registered_model(model).tags)
