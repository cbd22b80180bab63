"""The gateway's Open Inference Protocol (V2) routes in-process, against FAKE backends that
answer as ``mlflow models serve`` does (the real one is in the slow V2 tests) and a metadata
file the watcher would write, made here from a real MLflow signature."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from aiohttp import web
from mlflow.models import infer_signature
from mlops_autoserve.modelmeta import VersionMetadata, write_metadata

from tests.mlops_autoserve.gateway.test_gateway_inprocess import (
    backends,
    gateway,
    in_loop,
    route,
    until,
)

IRIS = pd.DataFrame({"sepal length (cm)": [5.1, 6.2], "sepal width (cm)": [3.5, 2.9],
                     "petal length (cm)": [1.4, 4.3], "petal width (cm)": [0.2, 1.3]})
SIGNATURE = infer_signature(IRIS, np.array([0, 1])).to_dict()


def iris_inputs(frame: pd.DataFrame = IRIS) -> list[dict]:
    return [{"name": c, "shape": [len(frame), 1], "datatype": "FP64", "data": frame[c].tolist()}
            for c in frame.columns]


def with_metadata(state_dir, model: str = "iris", version: int = 3) -> None:
    write_metadata(state_dir, VersionMetadata(model, version, "run", ("python_function",), SIGNATURE))


class Predicts:
    """A FAKE scoring server: checks the body is a dataframe_split and answers one class per row."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []

    async def __call__(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.bodies.append(body)
        if "dataframe_split" not in body:
            return web.json_response({"error_code": "BAD_REQUEST", "message": "Invalid input. Expected a DataFrame"},
                                     status=400)
        return web.json_response({"predictions": [i % 3 for i in range(len(body["dataframe_split"]["data"]))]})


async def call(gw, method: str, path: str, body: object = None, **kwargs) -> tuple[int, dict, dict]:
    async with gw.session.request(method, gw.url + path, json=body, **kwargs) as r:
        return r.status, dict(r.headers), json.loads(await r.read() or b"null")


@in_loop
async def test_infer_goes_to_the_default_alias_and_answers_v2_outputs_with_the_version(tmp_path):
    with_metadata(tmp_path)
    async with backends() as (b,), gateway(tmp_path, route("iris", "Production", b.url, version=3)) as gw:
        b.answer = predicts = Predicts()
        status, headers, out = await call(gw, "POST", "/v2/models/iris/infer", {"id": "abc", "inputs": iris_inputs()})
        assert status == 200, out
        assert out == {"model_name": "iris", "model_version": "3", "id": "abc",
                       "outputs": [{"name": "output-0", "shape": [2], "datatype": "INT64", "data": [0, 1]}]}
        assert headers["X-Model-Version"] == "3"
        assert predicts.bodies == [{"dataframe_split": {"columns": list(IRIS.columns), "data": IRIS.values.tolist()}}]
        # the same through /versions/{alias}, and counted as any call to the route
        status, _, _ = await call(gw, "POST", "/v2/models/iris/versions/Production/infer", {"inputs": iris_inputs()})
        assert status == 200
        counted = [s for s in await gw.metrics() if s.name == "autoserve_requests_total"
                   and s.labels.get("alias") == "Production"]
        assert sum(s.value for s in counted) == 2


@in_loop
async def test_a_request_that_does_not_fit_is_400_and_never_reaches_the_backend(tmp_path):
    with_metadata(tmp_path)
    async with backends() as (b,), gateway(tmp_path, route("iris", "Production", b.url, version=3)) as gw:
        b.answer = Predicts()
        wrong_shape = [{**iris_inputs()[0], "shape": [3, 1]}, *iris_inputs()[1:]]
        status, _, out = await call(gw, "POST", "/v2/models/iris/infer", {"inputs": wrong_shape})
        assert status == 400 and "needs 3 values" in out["error"]
        status, _, out = await call(gw, "POST", "/v2/models/iris/infer", {"inputs": iris_inputs()[:2]})
        assert status == 400 and "missing input 'petal length (cm)'" in out["error"]
        async with gw.session.post(gw.url + "/v2/models/iris/infer", data=b"{oops") as r:
            assert r.status == 400 and "not JSON" in (await r.json())["error"]
        assert b.calls == 0


@in_loop
async def test_unknown_models_and_aliases_are_404_and_a_bad_binary_header_400(tmp_path):
    async with backends() as (b,), gateway(tmp_path, route("iris", "Production", b.url)) as gw:
        for path in ("/v2/models/nope/infer", "/v2/models/iris/versions/nope/infer"):
            status, _, out = await call(gw, "POST", path, {"inputs": iris_inputs()})
            assert status == 404 and "no endpoint" in out["error"]
        status, _, out = await call(gw, "POST", "/v2/models/iris/infer", {"inputs": iris_inputs()},
                                    headers={"Inference-Header-Content-Length": "ten"})
        assert status == 400 and "must be a number of bytes" in out["error"]
        assert b.calls == 0


@in_loop
async def test_the_backends_own_error_keeps_its_status_and_message(tmp_path):
    async with backends() as (b,), gateway(tmp_path, route("iris", "Production", b.url)) as gw:
        async def refuses(request: web.Request) -> web.Response:
            return web.json_response({"error_code": "BAD_REQUEST", "message": "Invalid input. Column 'x'"},
                                     status=400)
        b.answer = refuses
        status, headers, out = await call(gw, "POST", "/v2/models/iris/infer",
                                          {"inputs": [{"name": "x", "shape": [1], "datatype": "FP64",
                                                       "data": [1.0]}]})
        assert (status, out) == (400, {"error": "Invalid input. Column 'x'"})
        assert headers["X-Model-Version"] == "1"


@in_loop
async def test_health_metadata_and_readiness(tmp_path):
    with_metadata(tmp_path)
    routes = (route("iris", "Production", "http://127.0.0.1:9", version=3), route("iris", "challenger"))
    async with gateway(tmp_path, *routes) as gw:
        assert (await call(gw, "GET", "/v2/health/live"))[0] == 200
        assert (await call(gw, "GET", "/v2/health/ready"))[:3:2] == (200, {"ready": True})
        status, _, server = await call(gw, "GET", "/v2")
        assert status == 200 and server["name"] == "mlops-toolkit" and server["version"]
        status, headers, meta = await call(gw, "GET", "/v2/models/iris")
        assert status == 200 and headers["X-Model-Version"] == "3"
        assert meta["name"] == "iris" and meta["platform"] == "mlflow" and meta["versions"] == ["Production",
                                                                                                 "challenger"]
        assert [i["name"] for i in meta["inputs"]] == list(IRIS.columns)
        assert {i["datatype"] for i in meta["inputs"]} == {"FP64"}
        assert (await call(gw, "GET", "/v2/models/iris/ready"))[:3:2] == (200, {"name": "iris", "ready": True})
        assert (await call(gw, "GET", "/v2/models/iris/versions/challenger/ready"))[0] == 400  # nothing ready
        assert (await call(gw, "GET", "/v2/models/nope/ready"))[0] == 404
        assert (await call(gw, "GET", "/v2/models/nope"))[0] == 404


@in_loop
async def test_v2_routes_need_the_bearer_token_but_health(tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret")
    async with backends() as (b,), gateway(tmp_path, route("iris", "Production", b.url),
                                           auth_token="s3cret") as gw:
        for method, path in (("GET", "/v2"), ("GET", "/v2/models/iris"), ("GET", "/v2/models/iris/ready"),
                             ("POST", "/v2/models/iris/infer")):
            assert (await call(gw, method, path, {"inputs": []} if method == "POST" else None))[0] == 401, path
        assert (await call(gw, "GET", "/v2/health/live"))[0] == 200
        assert (await call(gw, "GET", "/v2/health/ready"))[0] == 200
        status, _, _ = await call(gw, "GET", "/v2/models/iris", headers={"Authorization": "Bearer s3cret"})
        assert status == 200
        assert b.calls == 0


@in_loop
async def test_a_version_without_metadata_takes_columns_by_name(tmp_path):
    """A version served before its metadata file exists (or logged without a signature)."""
    async with backends() as (b,), gateway(tmp_path, route("iris", "Production", b.url, version=7)) as gw:
        b.answer = predicts = Predicts()
        status, _, out = await call(gw, "POST", "/v2/models/iris/infer", {"inputs": iris_inputs(IRIS[:1])})
        assert status == 200, out
        assert out["outputs"] == [{"name": "predictions", "shape": [1], "datatype": "INT64", "data": [0]}]
        assert predicts.bodies[0]["dataframe_split"]["columns"] == list(IRIS.columns)


@in_loop
async def test_v2_calls_are_shadowed_split_and_logged_as_what_the_backend_received(tmp_path):
    """A shadow gets the translated (MLflow) request; a 100 % canary answers as its version,
    translated with that version's signature."""
    from dataclasses import replace

    from mlops_autoserve.routetable import CanaryTarget, Replica, ShadowTarget

    with_metadata(tmp_path, version=3)
    with_metadata(tmp_path, version=4)
    async with backends(3) as (a, s, c):
        shadow = Predicts()
        a.answer, s.answer, c.answer = Predicts(), shadow, Predicts()
        shadowed = replace(route("iris", "Production", a.url, version=3),
                           shadow=ShadowTarget("challenger", 9, 100.0, "auto", (Replica(s.url, "s"),)))
        async with gateway(tmp_path, shadowed) as gw:
            status, _, out = await call(gw, "POST", "/v2/models/iris/infer", {"inputs": iris_inputs()})
            assert status == 200 and out["model_version"] == "3"
            await until(lambda: s.calls == 1, "the shadow copy")
            assert shadow.bodies == [{"dataframe_split": {"columns": list(IRIS.columns),
                                                          "data": IRIS.values.tolist()}}]
            await until(lambda: any(x.name == "autoserve_shadow_requests_total" and x.labels["result"] == "ok"
                                    for x in gw.gateway.metrics.shadow_requests.collect()[0].samples),
                        "the copy compared")
        canary = replace(route("iris", "Production", a.url, version=3),
                         canary=CanaryTarget(4, 100, (Replica(c.url, "c"),)))
        async with gateway(tmp_path, canary) as gw:
            status, headers, out = await call(gw, "POST", "/v2/models/iris/infer", {"inputs": iris_inputs()})
            assert status == 200 and out["model_version"] == "4" and headers["X-Model-Version"] == "4"
            assert c.calls == 1 and a.calls == 1  # only the earlier call reached the stable version


@in_loop
async def test_metadata_and_openapi_pages_of_a_route(tmp_path):
    from openapi_spec_validator import validate

    example = {"dataframe_split": {"columns": list(IRIS.columns), "data": IRIS.values.tolist()[:1]}}
    write_metadata(tmp_path, VersionMetadata("iris", 3, "run-9", ("python_function", "sklearn"), SIGNATURE, example,
                                             ("scikit-learn==1.5.2",), {"columns": [{"name": "x"}]}))
    routes = (route("iris", "Production", "http://127.0.0.1:9", version=3),
              route("iris", "staging", "http://127.0.0.1:9", version=5), route("iris", "starting"))
    async with gateway(tmp_path, *routes, auth_token="t0k") as gw:
        auth = {"Authorization": "Bearer t0k"}
        status, headers, meta = await call(gw, "GET", "/serve/iris/Production/metadata", headers=auth)
        assert status == 200 and headers["X-Model-Version"] == "3"
        assert (meta["version"], meta["run_id"], meta["flavors"]) == (3, "run-9", ["python_function", "sklearn"])
        assert [c["name"] for c in meta["signature"]["inputs"]] == list(IRIS.columns)  # JSON, not JSON text
        assert meta["input_example"] == example and meta["requirements"] == ["scikit-learn==1.5.2"]
        assert meta["data_contract"] == {"columns": [{"name": "x"}]}
        assert [i["name"] for i in meta["v2"]["inputs"]] == list(IRIS.columns)
        status, _, doc = await call(gw, "GET", "/serve/iris/Production/openapi.json", headers=auth)
        assert status == 200
        validate(doc)
        assert "/serve/iris/Production/invocations" in doc["paths"]
        # not published yet, not ready, unknown, no token
        status, headers, out = await call(gw, "GET", "/serve/iris/staging/metadata", headers=auth)
        assert (status, headers["Retry-After"]) == (503, "1") and "not published yet" in out["error"]
        assert (await call(gw, "GET", "/serve/iris/staging/openapi.json", headers=auth))[0] == 200  # generic bodies
        assert (await call(gw, "GET", "/serve/iris/starting/metadata", headers=auth))[0] == 503
        assert (await call(gw, "GET", "/serve/nope/x/openapi.json", headers=auth))[0] == 404
        assert (await call(gw, "GET", "/serve/iris/Production/metadata"))[0] == 401


@in_loop
async def test_docs_pages_list_every_route_and_load_swagger_ui_from_the_gateway_itself(tmp_path):
    hostile = "</script><script>alert(1)</script>"
    routes = (route("iris", "Production", "http://127.0.0.1:9", version=3), route(hostile, "a", "http://127.0.0.1:9"),
              route("iris", "starting"))
    async with gateway(tmp_path, *routes) as gw:
        async with gw.session.get(gw.url + "/docs") as r:
            assert r.status == 200 and r.content_type == "text/html"
            page = await r.text()
        assert "/serve/iris/Production/openapi.json" in page and "iris@Production (v3)" in page
        assert "starting" not in page  # nothing served there yet
        assert "<script>alert(1)</script>" not in page and "<\\/script>" in page  # stays inside its JSON
        assert "http://" not in page and "https://" not in page  # no CDN: every file from this gateway
        for name, kind in (("swagger-ui-bundle.js", "application/javascript"), ("swagger-ui.css", "text/css")):
            async with gw.session.get(f"{gw.url}/docs/static/{name}") as r:
                assert r.status == 200 and r.content_type == kind and len(await r.read()) > 100_000
        for name in ("LICENSE", "..%2F..%2Fapp.py", "index.html"):
            async with gw.session.get(f"{gw.url}/docs/static/{name}") as r:
                assert r.status == 404
        async with gw.session.get(gw.url + "/serve/iris/Production/docs") as r:
            assert r.status == 200 and '"url": "/serve/iris/Production/openapi.json"' in await r.text()
        async with gw.session.get(gw.url + "/serve/nope/x/docs") as r:
            assert r.status == 404
