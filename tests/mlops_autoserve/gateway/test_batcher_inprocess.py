"""Adaptive batching in the gateway, in-process, against FAKE backends that score
``dataframe_split`` rows the way a model does (one prediction per row, computed from the
row) and count the requests they get; the real-model property test is with the slow tests."""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import replace

from aiohttp import web
from mlops_autoserve.routetable import BatchSpec

from tests.mlops_autoserve.gateway.test_gateway_inprocess import backends, gateway, in_loop, route

COLUMNS = ["a", "b"]


def request(rows: list[list[float]]) -> bytes:
    return json.dumps({"dataframe_split": {"columns": COLUMNS, "data": rows}}).encode()


class RowScorer:
    """One prediction per row: a + 10 * b; 400 for a negative value (as a model server refusing input)."""

    def __init__(self, delay: float = 0.005, aligned: bool = True) -> None:
        self.delay, self.aligned = delay, aligned
        self.requests: list[int] = []  # rows per request received

    async def __call__(self, http: web.Request) -> web.Response:
        split = (await http.json())["dataframe_split"]
        columns, rows = split["columns"], split["data"]
        self.requests.append(len(rows))
        await asyncio.sleep(self.delay)
        if any(v < 0 for row in rows for v in row):
            return web.json_response({"error_code": "BAD_REQUEST", "message": "negative"}, status=400)
        if not self.aligned:
            return web.json_response({"predictions": 7})  # one number per call, whatever was sent
        named = [dict(zip(columns, row, strict=True)) for row in rows]
        return web.json_response({"predictions": [r["a"] + 10 * r["b"] for r in named]})


async def post(gw, body: bytes, alias: str = "prod") -> tuple[int, dict, dict]:
    async with gw.session.post(f"{gw.url}/serve/m/{alias}/invocations", data=body,
                               headers={"Content-Type": "application/json"}) as r:
        return r.status, dict(r.headers), json.loads(await r.read())


def batching(url: str, alias: str = "prod", max_rows: int = 64, max_wait_ms: float = 5.0):
    return replace(route("m", alias, url, version=2), batching=BatchSpec(max_rows, max_wait_ms))


@in_loop
async def test_concurrent_requests_are_scored_together_and_each_caller_gets_exactly_its_rows(tmp_path):
    rng = random.Random(7)
    async with backends() as (b,), gateway(tmp_path, batching(b.url)) as gw:
        b.answer = scorer = RowScorer()
        sent = [[[rng.randint(0, 9), rng.randint(0, 9)] for _ in range(rng.randint(1, 5))] for _ in range(200)]
        answers = await asyncio.gather(*(post(gw, request(rows)) for rows in sent))
        for rows, (status, headers, body) in zip(sent, answers, strict=True):
            assert status == 200 and headers["X-Model-Version"] == "2"
            assert body == {"predictions": [r[0] + 10 * r[1] for r in rows]}  # its own rows, in order
        assert sum(scorer.requests) == sum(len(r) for r in sent)
        assert len(scorer.requests) < len(sent) / 4  # scored together
        assert max(scorer.requests) <= 64 + 4  # a batch closes once max_rows wait (plus the last request's)
        samples = {(x.name, tuple(x.labels.items())): x.value for x in await gw.metrics()}
        batches = samples[("autoserve_batch_rows_count", ())]
        assert batches >= 1 and samples[("autoserve_batch_rows_sum", ())] <= sum(len(r) for r in sent)
        assert samples[("autoserve_batch_requests_count", ())] == batches


@in_loop
async def test_a_lone_caller_never_waits_for_a_batch(tmp_path):
    async with backends() as (b,), gateway(tmp_path, batching(b.url, max_wait_ms=500)) as gw:
        b.answer = RowScorer(delay=0)
        loop = asyncio.get_running_loop()
        started = loop.time()
        for _ in range(5):
            assert (await post(gw, request([[1, 2]])))[0] == 200
        assert loop.time() - started < 0.5  # 5 calls, none held for the 500 ms window


@in_loop
async def test_an_answer_not_one_per_row_is_sent_again_one_by_one_and_the_version_is_not_batched_again(tmp_path):
    async with backends() as (b,), gateway(tmp_path, batching(b.url)) as gw:
        b.answer = scorer = RowScorer(aligned=False)
        answers = await asyncio.gather(*(post(gw, request([[i, 1]])) for i in range(20)))
        assert [(a[0], a[2]) for a in answers] == [(200, {"predictions": 7})] * 20  # what each gets alone
        assert ("m", "prod", 2) in gw.gateway.batcher.not_batchable
        resent = {x.labels["reason"]: x.value for x in await gw.metrics() if x.name == "autoserve_batches_resent_total"}
        assert resent == {"error": 0, "not_row_aligned": 1}
        _, page = await gw.get_admin("/endpoints")
        assert json.loads(page)[0]["batching"] == {"max_rows": 64, "max_wait_ms": 5.0, "batchable": False}
        before = len(scorer.requests)
        await asyncio.gather(*(post(gw, request([[i, 1]])) for i in range(10)))
        assert scorer.requests[before:] == [1] * 10  # every request alone now


@in_loop
async def test_one_bad_request_in_a_batch_gets_its_own_400_and_the_others_200(tmp_path):
    async with backends() as (b,), gateway(tmp_path, batching(b.url)) as gw:
        b.answer = scorer = RowScorer()
        bodies = [request([[i, 1]]) for i in range(15)] + [request([[-1, 1]])]
        answers = await asyncio.gather(*(post(gw, body) for body in bodies))
        assert [a[0] for a in answers[:15]] == [200] * 15
        assert answers[15][0] == 400 and answers[15][2] == {"error_code": "BAD_REQUEST", "message": "negative"}
        assert [a[2]["predictions"] for a in answers[:15]] == [[i + 10] for i in range(15)]
        assert max(scorer.requests) > 1  # there was a batch, and it was sent again one by one


@in_loop
async def test_requests_of_other_shapes_or_routes_are_never_merged(tmp_path):
    async with backends(2) as (b, other), gateway(tmp_path, batching(b.url), batching(other.url, "other")) as gw:
        b.answer, other.answer = mine, theirs = RowScorer(), RowScorer()
        mixed = [request([[1, 2]]), request([[1.5, 2.5]]),  # int and float rows: two shapes
                 json.dumps({"dataframe_split": {"columns": ["b", "a"], "data": [[2, 1]]}}).encode()]
        results = await asyncio.gather(*(post(gw, body) for body in mixed * 5),
                                       *(post(gw, request([[3, 4]]), "other") for _ in range(5)))
        assert all(status == 200 for status, _, _ in results)
        assert [r[2]["predictions"] for r in results[:15]] == [[21], [26.5], [21]] * 5  # b=2, a=1: by name
        assert all(r[2]["predictions"] == [43] for r in results[15:])
        assert sum(theirs.requests) == 5 and sum(mine.requests) == 15  # no request crossed routes
