"""The watcher's view of a gateway run as several processes (:class:`GatewayFleet`).

Real `mlops gateway --instances 2` processes in front of a fake backend (an aiohttp app in
this test process, see tests/mlops_autoserve/gateway/test_instances.py) and a routes.json
written here. Requests go through both instances; the fleet, knowing them only from their
records in the state dir, must add their figures up as one gateway would report them, merge
their latency histograms for a rollout's p95, and ignore a record nobody refreshes.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Iterator

import pytest
from aiohttp import web
from mlops_autoserve import latency
from mlops_autoserve.gateway.server import GATEWAYS_DIR, STALE_S
from mlops_autoserve.settings import AutoserveSettings
from mlops_autoserve.watcher.gateways import GatewayFleet, registered

from mlops_toolkit import http
from mlops_toolkit.ops.processes import pid_running
from tests.mlops_autoserve.gateway.test_instances import (
    ALIAS,
    MODEL,
    FakeBackend,
    RunningGateway,
    invoke,
    start_gateway,
    stop_gateway,
)

TOKEN = "fleet-admin-token"


@pytest.fixture(scope="module")
def backend() -> Iterator[FakeBackend]:
    fake = FakeBackend().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, backend) -> Iterator[RunningGateway]:
    """Two instances with an admin token, and traffic through both: 36 fast answers, 4 slow."""
    running = start_gateway(tmp_path_factory.mktemp("fleet"), backend.url, 2, admin_token=TOKEN)
    started = time.time()
    assert [invoke(running.port, sleep_ms=0) for _ in range(36)] == [200] * 36
    assert [invoke(running.port, sleep_ms=300) for _ in range(4)] == [200] * 4
    running.started = started  # type: ignore[attr-defined]
    yield running
    stop_gateway(running)


def fleet_for(gateway: RunningGateway, token: str | None = TOKEN, urls: tuple[str, ...] = ()) -> GatewayFleet:
    return GatewayFleet(AutoserveSettings(tracking_uri="http://unused", state_dir=gateway.state_dir,
                                          gateway_admin_urls=urls, gateway_admin_token=token, run_gateway=False))


def each(gateway: RunningGateway, path: str) -> list[dict]:
    """What every instance says on its own."""
    return [http.get_json(gateway.admin_url(i) + path, headers={"Authorization": f"Bearer {TOKEN}"})
            for i in range(gateway.instances)]


def test_load_and_inflight_are_summed_over_the_instances(gateway, backend):
    alone = each(gateway, "/load")
    assert all(backend.url in figures and figures[backend.url]["requests"] > 0 for figures in alone), alone
    fleet = fleet_for(gateway)  # no URL given: both found through their records
    assert sorted(fleet.urls()) == [gateway.admin_url(0), gateway.admin_url(1)]
    assert fleet.load() == {backend.url: {"inflight": 0, "requests": 40}}
    assert fleet.inflight() == {backend.url: 0}


def test_the_rollout_figures_merge_the_latency_histograms(gateway, backend):
    query = f"/stats?model={MODEL}&alias={ALIAS}&version=1&since={gateway.started}"
    alone = each(gateway, query)
    assert min(a["requests"] for a in alone) > 0 and sum(a["requests"] for a in alone) == 40
    stats = fleet_for(gateway).stats(MODEL, ALIAS, "1", gateway.started)
    assert (stats["requests"], stats["errors"], stats["instances"]) == (40, 0, 2)
    # 4 of 40 answers took 300 ms: the p95 is among them, whichever instance had them
    merged = latency.merge(a["latency_buckets"] for a in alone)
    assert stats["p95_ms"] == latency.quantile_ms(merged) and 300 <= stats["p95_ms"] < 400
    assert sum(stats["latency_buckets"].values()) == 40


def test_without_the_admin_token_no_figures_are_taken(gateway):
    """A 401 is no answer: the callers keep what they do without figures."""
    fleet = fleet_for(gateway, token=None)
    assert (fleet.load(), fleet.inflight(), fleet.stats(MODEL, ALIAS, "1", 0)) == (None, None, None)


def test_an_instance_named_twice_is_counted_once(gateway, backend):
    fleet = fleet_for(gateway, urls=(gateway.admin_url(0) + "/", gateway.admin_url(0).replace("127.0.0.1",
                                                                                               "localhost")))
    assert len(fleet.urls()) == 2
    assert fleet.load()[backend.url]["requests"] == 40


class FakeAdmin:
    """An admin port answering /load with large figures: counted only when a fresh record names it."""

    def __init__(self, backend_url: str) -> None:
        self.backend_url = backend_url
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runner, self.url = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> tuple[web.AppRunner, str]:
        app = web.Application()
        app.add_routes([web.get("/load", lambda r: web.json_response(
            {self.backend_url: {"inflight": 7, "requests": 1000}}))])
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # noqa: SLF001

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def test_a_stale_record_is_ignored_and_removed(gateway, backend):
    other = FakeAdmin(backend.url)
    record = gateway.state_dir / GATEWAYS_DIR / "999999.json"
    try:
        record.write_text(json.dumps({"admin_url": other.url, "pid": 999999, "port": gateway.port}))
        old = time.time() - STALE_S - 5  # its process stopped refreshing it
        os.utime(record, (old, old))
        fleet = fleet_for(gateway)
        assert fleet.load() == {backend.url: {"inflight": 0, "requests": 40}}
        assert not record.exists()  # the watcher cleans up after a gateway that died
        record.write_text(json.dumps({"admin_url": other.url, "pid": 999999, "port": gateway.port}))
        assert fleet.load() == {backend.url: {"inflight": 7, "requests": 1040}}  # a fresh one counts
    finally:
        record.unlink(missing_ok=True)
        other.stop()


def test_records_are_refreshed_while_the_instances_run(gateway):
    """The heartbeat: a live gateway's record never goes stale, however long it runs."""
    paths = list((gateway.state_dir / GATEWAYS_DIR).glob("*.json"))
    assert len(paths) == 2
    old = time.time() - STALE_S + 4  # about to go stale
    for path in paths:
        os.utime(path, (old, old))
    time.sleep(3.5)  # one heartbeat (every 3 s)
    assert all(time.time() - p.stat().st_mtime < 4 for p in paths)
    assert len(registered(gateway.state_dir)) == 2


def test_the_watcher_restarts_a_supervisor_that_died(tmp_path, backend):
    """`mlops autoserve --gateway-instances 2`: the watcher's GatewayProcess runs the
    supervisor; killed with -9, it takes its instances along and is started again."""
    from mlops_autoserve.gateway_process import GatewayProcess
    from mlops_autoserve.settings import GatewaySettings

    from tests.mlops_autoserve.gateway.test_instances import free_ports, write_routes

    state = tmp_path / "state"
    write_routes(state, backend.url)
    process = GatewayProcess(GatewaySettings(state_dir=state, port=free_ports(1), admin_port=free_ports(2),
                                             instances=2))
    try:
        assert process.ensure() == "started"
        fleet = GatewayFleet(AutoserveSettings(tracking_uri="http://unused", state_dir=state, run_gateway=False))
        first = {r["pid"] for r in registered(state)}
        assert len(first) == 2 and sorted(fleet.urls()) == list(process.admin_urls)
        assert [invoke(process.settings.port) for _ in range(10)] == [200] * 10
        os.kill(process.pid, 9)
        deadline = time.monotonic() + 5
        while process.alive():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        process.restart()
        second = {r["pid"] for r in registered(state)}
        assert len(second) == 2 and not first & second
        assert not any(pid_running(p) for p in first)  # the dead supervisor's instances went with it
        assert [invoke(process.settings.port) for _ in range(10)] == [200] * 10
        assert fleet.load() == {backend.url: {"inflight": 0, "requests": 10}}  # the new instances' counts
    finally:
        process.stop()
    assert registered(state) == []


def test_serve_status_reads_a_gateway_that_has_an_admin_token(gateway):
    from click.testing import CliRunner

    from mlops_toolkit.cli import main
    from tests.mlops_toolkit.cli.conftest import assert_one_line_error

    token_file = gateway.state_dir.parent / "admin-token"
    shown = CliRunner().invoke(main, ["serve", "status", "--gateway-admin", gateway.admin_url(1), "--json"],
                               env={"MLOPS_GATEWAY_ADMIN_TOKEN_FILE": str(token_file)})
    assert shown.exit_code == 0, shown.output
    assert [(e["model"], e["alias"], e["version"]) for e in json.loads(shown.stdout)] == [(MODEL, ALIAS, 1)]
    refused = CliRunner().invoke(main, ["serve", "status", "--gateway-admin", gateway.admin_url(0)],
                                 env={"MLOPS_GATEWAY_ADMIN_TOKEN_FILE": None})
    assert refused.exit_code == 1
    assert_one_line_error(refused.stderr, "answered HTTP 401", "pass --admin-token-file")


def test_an_instance_that_restarts_or_misses_a_sample_is_no_burst_of_load():
    """Rates are taken per instance, then added: summed counters would jump."""
    from mlops_autoserve.watcher.autoscale import Load, LoadMeter
    from mlops_autoserve.watcher.runtime.base import DeploymentKey

    key, meter = DeploymentKey("m", 1), LoadMeter()
    urls = {key: ["http://r"]}

    def sample(now: float, **counts: int) -> Load:
        return meter.measure_instances({i: {"http://r": {"inflight": 1, "requests": n}} for i, n in counts.items()},
                                       urls, now)[key]

    assert sample(0, a=1000, b=5000) == Load(2, 0.0)  # no rate before a second sample
    assert sample(2, a=1020, b=5020) == Load(2, 20.0)  # 10 req/s each
    assert sample(4, a=1040) == Load(1, 10.0)  # b did not answer: its share is unknown, not negative
    assert sample(6, a=1060, b=5060) == Load(2, 20.0)  # b back: 40 requests over the 4 s since its last count
    assert sample(8, a=1080, b=3) == Load(2, 10.0)  # b restarted (counters at 0): no rate from it this once
    assert sample(10, a=1100, b=23) == Load(2, 20.0)
