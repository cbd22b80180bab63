"""The Open Inference Protocol (V2) end to end, spoken by NVIDIA Triton's own HTTP client
(``tritonclient[http]``, nobody here wrote it) to the real gateway in front of real
``mlflow models serve`` processes: a column-signature model (the iris DataFrame) and a
tensor-signature model (a numpy array), predictions equal to ``/invocations``, and the
spec's errors for a wrong shape and an unknown model."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import mlops_toolkit as mt
from tests.harness import IRIS_COLUMNS, IRIS_SPLIT, Watcher, http_json, wait_for

pytestmark = pytest.mark.slow

try:
    import tritonclient.http as tritonclient_http
except ImportError:  # a dev dependency: missing under CI is a failure, never a skip
    if os.environ.get("CI") == "true":
        raise
    pytest.skip("tritonclient[http] (a dev dependency) is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def tensor_model(tracking_uri, iris_data) -> str:
    """An sklearn model logged with a numpy input example: a tensor signature ([-1, 4] float64)."""
    from sklearn.linear_model import LogisticRegression

    X, y = iris_data
    name = f"iris-tensor-{uuid.uuid4().hex[:6]}"
    mt.configure(tracking_uri=tracking_uri, experiment="autoserve-tests")
    with mt.start_run("tensor") as run:
        version = run.log_model(LogisticRegression(max_iter=300).fit(X.values, y), register_as=name,
                                input_example=X.values[:2])
    mt.set_alias(name, "Production", version)
    return name


@pytest.fixture(scope="module")
def served(tracking_uri, served_model, tensor_model, tmp_path_factory) -> Iterator[Watcher]:
    mt.set_alias(served_model.name, "Production", served_model.good[0])
    state = tmp_path_factory.mktemp("v2") / "state"
    watcher = Watcher(tracking_uri, state, [served_model.name, tensor_model], "--aliases", "Production").start()
    try:
        wait_for(lambda: len([e for e in http_json("GET", watcher.admin_url + "/endpoints")[2]
                              if e["state"] == "ready"]) == 2, 180, what="both models ready")
        # the metadata the watcher publishes for each version, which the gateway reads
        wait_for(lambda: len(list((state / "metadata").glob("*/*.json"))) == 2, 60, what="metadata published")
        yield watcher
    finally:
        watcher.stop()


@pytest.fixture
def client(served) -> tritonclient_http.InferenceServerClient:
    return tritonclient_http.InferenceServerClient(f"127.0.0.1:{served.port}")


def iris_inputs(rows: list[list[float]]) -> list:
    inputs = []
    for i, column in enumerate(IRIS_COLUMNS):
        tensor = tritonclient_http.InferInput(column, [len(rows), 1], "FP64")
        tensor.set_data_from_numpy(np.array([[r[i]] for r in rows], dtype=np.float64))
        inputs.append(tensor)
    return inputs


def test_server_and_model_health_and_metadata(client, served_model, tensor_model):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(served_model.name) and client.is_model_ready(tensor_model)
    assert not client.is_model_ready("no-such-model")
    assert client.get_server_metadata()["name"] == "mlops-toolkit"
    meta = client.get_model_metadata(served_model.name)
    assert [i["name"] for i in meta["inputs"]] == IRIS_COLUMNS and {i["datatype"] for i in meta["inputs"]} == {"FP64"}
    assert meta["platform"] == "mlflow" and meta["versions"] == ["Production"]
    tensor_meta = client.get_model_metadata(tensor_model, model_version="Production")
    assert tensor_meta["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}]


def test_column_model_infer_equals_invocations(client, served, served_model):
    rows = IRIS_SPLIT["dataframe_split"]["data"]
    result = client.infer(served_model.name, iris_inputs(rows), request_id="req-1")
    response = result.get_response()
    assert response["model_version"] == str(served_model.good[0]) and response["id"] == "req-1"
    name = response["outputs"][0]["name"]
    path = f"/serve/{served_model.name.replace(' ', '%20')}/Production/invocations"
    status, _, direct = http_json("POST", served.url + path, IRIS_SPLIT)
    assert status == 200
    assert result.as_numpy(name).tolist() == direct["predictions"]


def test_tensor_model_infer_equals_invocations(client, served, tensor_model, iris_data):
    X, _ = iris_data
    data = X.values[:5].astype(np.float64)
    tensor = tritonclient_http.InferInput("input-0", list(data.shape), "FP64")
    tensor.set_data_from_numpy(data)
    result = client.infer(tensor_model, [tensor], model_version="Production")
    status, _, direct = http_json("POST", f"{served.url}/serve/{tensor_model}/Production/invocations",
                                  {"inputs": data.tolist()})
    assert status == 200
    name = result.get_response()["outputs"][0]["name"]
    assert result.as_numpy(name).tolist() == direct["predictions"]


def test_a_wrong_shape_a_wrong_datatype_and_an_unknown_model_give_the_specs_errors(client, served_model,
                                                                                   tensor_model):
    from tritonclient.utils import InferenceServerException

    wrong = tritonclient_http.InferInput("input-0", [2, 3], "FP64")
    wrong.set_data_from_numpy(np.zeros((2, 3)))
    with pytest.raises(InferenceServerException, match=r"has shape \[2, 3\]; the model takes \[-1, 4\]"):
        client.infer(tensor_model, [wrong])
    inputs = iris_inputs([[5.1, 3.5, 1.4, 0.2]])
    inputs[0] = tritonclient_http.InferInput(IRIS_COLUMNS[0], [1, 1], "FP32")
    inputs[0].set_data_from_numpy(np.array([[5.1]], dtype=np.float32))
    with pytest.raises(InferenceServerException, match="is FP32; the model takes FP64"):
        client.infer(served_model.name, inputs)
    with pytest.raises(InferenceServerException, match="no endpoint for no-such-model@Production"):
        client.infer("no-such-model", iris_inputs([[5.1, 3.5, 1.4, 0.2]]))


# -- the docs page in a real browser ---------------------------------------------------------
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser():
    """Debian's headless Chromium, driven by Selenium through Debian's chromedriver."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        if os.environ.get("CI") == "true":
            pytest.fail("chromium and chromium-driver (Debian packages) are not installed")
        pytest.skip("chromium and chromium-driver (Debian packages) are not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_docs_page_shows_the_models_columns_and_its_example_answers_with_the_version(browser, served,
                                                                                          served_model):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 30)
    browser.get(f"{served.url}/serve/{served_model.name.replace(' ', '%20')}/Production/docs")
    operation = wait.until(seen.element_to_be_clickable((By.CSS_SELECTOR, "#operations-default-invocations")))
    operation.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
    wait.until(seen.element_to_be_clickable((By.CSS_SELECTOR, "#operations-default-invocations .try-out__btn"))).click()
    body = wait.until(seen.presence_of_element_located((By.CSS_SELECTOR, "#operations-default-invocations textarea")))
    assert "sepal length (cm)" in body.get_attribute("value")  # the logged example, real column names
    browser.find_element(By.CSS_SELECTOR, "#operations-default-invocations .execute").click()
    status = wait.until(seen.presence_of_element_located(
        (By.CSS_SELECTOR, "#operations-default-invocations .live-responses-table tr.response .response-col_status")))
    assert status.text.strip() == "200"
    headers = browser.find_element(By.CSS_SELECTOR, "#operations-default-invocations .live-responses-table").text
    assert f"x-model-version: {served_model.good[0]}" in headers.lower()
    assert "predictions" in headers
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors


# -- KServe's client, in a venv of its own ---------------------------------------------------
KSERVE = "kserve==0.21.0"


@pytest.fixture(scope="session")
def kserve_python() -> Path:
    """A venv with kserve (its dependencies would downgrade pandas and bring the Kubernetes
    client into the project's own), made once per machine under ~/.cache and reused."""
    import subprocess
    import sys

    root = Path.home() / ".cache" / "mlops-toolkit-tests" / KSERVE.replace("==", "-")
    python = root / "bin" / "python"
    marker = root / ".installed"
    if not marker.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(root)], check=True, timeout=120)
        done = subprocess.run([str(python), "-m", "pip", "install", "-q", KSERVE], capture_output=True, text=True,
                              timeout=900)
        if done.returncode != 0:
            message = f"pip install {KSERVE} failed: {done.stderr[-500:]}"
            if os.environ.get("CI") == "true":
                pytest.fail(message)
            pytest.skip(message)
        marker.write_text(KSERVE)
    return python


def test_kserves_client_sees_health_the_same_predictions_and_the_specs_errors(kserve_python, served, served_model,
                                                                            tensor_model):
    import json
    import subprocess

    rows = IRIS_SPLIT["dataframe_split"]["data"]
    script = Path(__file__).with_name("kserve_client.py")
    done = subprocess.run([str(kserve_python), str(script), served.url, served_model.name, json.dumps(IRIS_COLUMNS),
                           json.dumps(rows), tensor_model], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert (seen["live"], seen["ready"], seen["model_ready"]) == (True, True, True)
    assert seen["version_header"] == str(served_model.good[0]) and seen["id"] == "k-1"
    path = f"/serve/{served_model.name.replace(' ', '%20')}/Production/invocations"
    assert seen["predictions"] == http_json("POST", served.url + path, IRIS_SPLIT)[2]["predictions"]
    assert seen["tensor_ready"] is True
    tensor_path = f"/serve/{tensor_model}/Production/invocations"
    assert seen["tensor_predictions"] == http_json("POST", served.url + tensor_path, {"inputs": rows})[2]["predictions"]
    assert seen["wrong_datatype"]["status"] == 400
    assert "is FP32; the model takes FP64" in seen["wrong_datatype"]["body"]["error"]
    assert seen["unknown_model"]["status"] == 404
    assert seen["unknown_model"]["body"] == {"error": "no endpoint for no-such-model@Production",
                                             "model": "no-such-model", "alias": "Production"}
