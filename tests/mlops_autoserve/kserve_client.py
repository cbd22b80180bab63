"""KServe's own V2 client against the gateway: run with the Python of a venv that has
``kserve`` (tests/mlops_autoserve/test_v2_serving.py makes one: kserve's dependencies would
change the project's own). Prints one JSON object with what the client saw.

    python kserve_client.py BASE_URL MODEL COLUMNS_JSON ROWS_JSON TENSOR_MODEL
"""

from __future__ import annotations

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig


def inputs(columns: list[str], rows: list[list[float]], datatype: str = "FP64") -> list[InferInput]:
    dtype = np.float32 if datatype == "FP32" else np.float64
    out = []
    for j, column in enumerate(columns):
        tensor = InferInput(column, [len(rows), 1], datatype)
        tensor.set_data_from_numpy(np.array([[r[j]] for r in rows], dtype=dtype))  # binary, the default
        out.append(tensor)
    return out


async def main(base: str, model: str, columns: list[str], rows: list[list[float]], tensor_model: str) -> dict:
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
    seen: dict = {"live": await client.is_server_live(base), "ready": await client.is_server_ready(base),
                  "model_ready": await client.is_model_ready(base, model)}
    headers: dict = {}
    result = await client.infer(base, InferRequest(model, inputs(columns, rows), request_id="k-1"), model_name=model,
                                response_headers=headers)
    # kserve 0.21's InferResponse.from_bytes does not keep model_version: the header says it
    seen.update(version_header=headers.get("x-model-version"), id=result.id,
                predictions=result.outputs[0].as_numpy().tolist())
    tensor = InferInput("input-0", [len(rows), len(columns)], "FP64")
    tensor.set_data_from_numpy(np.array(rows, dtype=np.float64))
    result = await client.infer(base, InferRequest(tensor_model, [tensor]), model_name=tensor_model)
    seen.update(tensor_ready=await client.is_model_ready(base, tensor_model),
                tensor_predictions=result.outputs[0].as_numpy().tolist())
    for name, request, target in (
            ("wrong_datatype", InferRequest(model, inputs(columns, rows, "FP32")), model),
            ("unknown_model", InferRequest("no-such-model", inputs(columns, rows)), "no-such-model")):
        try:
            await client.infer(base, request, model_name=target)
            seen[name] = None
        except Exception as exc:  # noqa: BLE001 - what the client raised is what the test reads
            response = getattr(exc, "response", None)
            seen[name] = {"status": getattr(response, "status_code", None),
                          "body": response.json() if response is not None else str(exc)}
    await client.close()
    return seen


if __name__ == "__main__":
    base_url, model_name, columns_json, rows_json, tensor_name = sys.argv[1:6]
    print(json.dumps(asyncio.run(main(base_url, model_name, json.loads(columns_json), json.loads(rows_json),
                                      tensor_name))))
