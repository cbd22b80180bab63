"""Per-model environments: alias -> serving when the version needs an environment of its own.

Three cases side by side, per runtime, each repeated with empty caches:
  cold  - a LightGBM version, nothing built yet (uv resolves, downloads, installs; Docker
          derives an image), then the deployment starts;
  warm  - the next LightGBM version, same requirements: the environment is found, not built;
  local - an sklearn version the serving environment satisfies (the path every model took
          before per-model environments).
Also the disk each environment takes.

    python -m benchmarks.bench_environments [--repeats 3] [--docker-image IMAGE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlops_autoserve.watcher.envstore import uv_binary, uv_environment

import mlops_toolkit as mt
from benchmarks.support import ServingStack, print_table, write_json
from tests.harness import IRIS_SPLIT, LoadClient, Watcher, http_json, wait_for

LGBM_ROW = {"dataframe_split": {"columns": ["sepal_length", "sepal_width", "petal_length", "petal_width"],
                                "data": [[5.1, 3.5, 1.4, 0.2]]}}
LOG_MODELS = Path(__file__).resolve().parent.parent / "tests" / "mlops_autoserve" / "envmodels" / "log_models.py"


def log_lightgbm(root: Path, tracking_uri: str) -> tuple[str, list[int]]:
    """Two LightGBM versions, logged from an authoring environment (this one has no LightGBM)."""
    import mlflow

    uv, venv = uv_binary(), root / "authoring"
    env = {**uv_environment(), "UV_CACHE_DIR": str(root / "authoring-uv-cache")}
    python = str(venv / "bin" / "python")
    subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], env=env, check=True)
    subprocess.run([uv, "pip", "install", "--quiet", "--python", python, f"mlflow=={mlflow.__version__}", "lightgbm",
                    "emoji", "scikit-learn", "pandas"], env=env, check=True)
    done = subprocess.run([python, str(LOG_MODELS), tracking_uri, "bench-lgbm", "bench-emoji"], env=env, check=True,
                          capture_output=True, text=True)
    return "bench-lgbm", json.loads(done.stdout.strip().splitlines()[-1])["lightgbm"]


def time_to_serving(watcher: Watcher, model: str, version: int, payload: dict) -> float:
    """Seconds from the alias call to the first answer of ``version`` through the gateway."""
    with LoadClient(watcher.port, f"/serve/{model}/Production/invocations", payload=payload) as client:
        called = time.monotonic()
        mt.set_alias(model, "Production", version)
        return wait_for(lambda: client.first_answer(version, called), 600, interval=0.05) - called


def one_round(stack: ServingStack, lgbm: str, lgbm_versions: list[int], root: Path, docker_image: str | None) -> dict:
    """Fresh state and empty caches: cold, warm and local once each."""
    extra = ["--runtime", "docker", "--docker-image", docker_image] if docker_image else []
    cache = root / "env-cache"
    root.mkdir(parents=True, exist_ok=True)
    for model in (lgbm, stack.model):  # nothing serves when the round starts
        with contextlib.suppress(mt.NotFoundError):
            mt.delete_alias(model, "Production")
    watcher = Watcher(stack.server.uri, root / "state", [lgbm, stack.model], "--env-cache", str(cache),
                      "--aliases", "Production", *extra, poll_interval=0.5).start()
    try:
        cold = time_to_serving(watcher, lgbm, lgbm_versions[0], LGBM_ROW)
        warm = time_to_serving(watcher, lgbm, lgbm_versions[1], LGBM_ROW)
        mt.set_alias(stack.model, "Production", stack.versions[0])
        wait_for(lambda: _ready(watcher, stack.model, stack.versions[0]), 120)
        local = time_to_serving(watcher, stack.model, stack.versions[1], IRIS_SPLIT)
        _, _, listing = http_json("GET", f"{watcher.watcher_url}/envs")
        built = [json.loads(line) for line in watcher.log_path.read_text().splitlines()
                 if '"environment built"' in line]
    finally:
        watcher.stop()
    envs = listing["environments"]
    return {"cold_s": cold, "warm_s": warm, "local_s": local, "build_s": built[0]["seconds"] if built else None,
            "env_bytes": envs[0]["size_bytes"] if envs else None,
            "uv_cache_bytes": _du(cache / ".uv-cache") if not docker_image else None}


def _ready(watcher: Watcher, model: str, version: int) -> bool:
    _, _, data = http_json("GET", watcher.admin_url + "/endpoints")
    return any(e["model"] == model and e["state"] == "ready" and e["version"] == version for e in data)


def _du(path: Path) -> int:
    if not path.exists():
        return 0
    return int(subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True).stdout.split()[0])


def remove_env_images(docker_image: str) -> None:
    """Cold means cold: the images earlier rounds derived from the serving image go."""
    import docker

    client = docker.from_env()
    base = client.images.get(docker_image).id
    for image in client.images.list(filters={"label": ["mlops.env=true", f"mlops.env.base={base}"]}):
        client.images.remove(image.id, force=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--docker-image", help="Also measure the Docker runtime with this serving image.")
    args = parser.parse_args()
    runtimes = ["process"] + (["docker"] if args.docker_image else [])
    results = {}
    with tempfile.TemporaryDirectory() as tmp, ServingStack(Path(tmp), versions=2) as stack:
        lgbm, lgbm_versions = log_lightgbm(Path(tmp), stack.server.uri)
        for runtime in runtimes:
            image = args.docker_image if runtime == "docker" else None
            rounds = []
            for i in range(args.repeats):
                root = Path(tmp) / f"{runtime}-{i}"
                if image:
                    remove_env_images(image)
                rounds.append(one_round(stack, lgbm, lgbm_versions, root, image))
                shutil.rmtree(root, ignore_errors=True)
                print(f"{runtime} round {i + 1}: {rounds[-1]}", flush=True)
            if image:
                remove_env_images(image)
            results[runtime] = rounds
    rows = []
    for runtime, rounds in results.items():
        def med(key: str) -> float:
            return statistics.median(r[key] for r in rounds if r[key] is not None)

        uv_cache = [r["uv_cache_bytes"] for r in rounds if r["uv_cache_bytes"]]
        rows.append([runtime, f"{med('cold_s'):.1f}", f"{med('build_s'):.1f}", f"{med('warm_s'):.1f}",
                     f"{med('local_s'):.1f}", f"{med('env_bytes') / 1024**2:.0f}",
                     f"{statistics.median(uv_cache) / 1024**2:.0f}" if uv_cache else "-"])
    print(f"\nAlias -> first answer of the new version, median of {args.repeats} rounds with empty caches")
    print_table(["runtime", "cold s", "of which build s", "warm s", "local s", "env MB", "uv cache MB"], rows)
    print(f"written {write_json('bench_environments', {'repeats': args.repeats, 'results': results})}")


if __name__ == "__main__":
    main()
