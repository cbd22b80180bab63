"""Deciding whether a version needs an environment of its own, and what goes into it."""

from __future__ import annotations

import pytest
from mlops_autoserve.watcher.envspec import (
    Interpreter,
    ModelNeeds,
    build_lines,
    env_key,
    requirement_lines,
    unmet,
)
from mlops_autoserve.watcher.envstore import (
    EnvInfo,
    failure_reason,
    to_prune,
    uv_environment,
)

SERVING = Interpreter("3.11.7", {"mlflow": "3.17.2", "numpy": "2.4.6", "scikit-learn": "1.9.1", "pandas": "3.1.1"})


def needs(*lines: str) -> ModelNeeds:
    return ModelNeeds(tuple(lines), (), "3.11.7")


def test_the_common_sklearn_case_needs_nothing_built():
    assert unmet(needs("mlflow==3.1.0", "numpy==2.4.6", "scikit-learn==1.9.1", "pandas<4"), SERVING) == []


@pytest.mark.parametrize("line", ["lightgbm==4.7.0", "scikit-learn==1.5.2", "numpy>=3", "Scikit_Learn==1.0",
                                  "-c constraints.txt", "pkg @ https://example.invalid/pkg.whl", "not a requirement!"])
def test_what_the_serving_environment_lacks_or_cannot_check_is_unmet(line):
    assert unmet(needs("numpy==2.4.6", line), SERVING) == [line]


def test_mlflow_pins_and_markers_for_other_pythons_are_not_reasons_to_build():
    assert unmet(needs("mlflow==2.9.0", "mlflow-skinny==2.9.0", 'tomli==2.0; python_version < "3.11"'), SERVING) == []
    assert unmet(needs('tomli==2.0; python_version >= "3.11"'), SERVING) == ['tomli==2.0; python_version >= "3.11"']


def test_requirement_files_keep_requirements_and_options_only():
    text = "# comment\nmlflow==3.17.2\n\n  lightgbm==4.7.0  # pinned\n-c constraints.txt\n"
    assert requirement_lines(text) == ["mlflow==3.17.2", "lightgbm==4.7.0", "-c constraints.txt"]


def test_built_environments_get_the_serving_mlflow_with_the_model_extras():
    assert build_lines(needs("mlflow[gateway]==2.9.0", "lightgbm==4.7.0"), "3.17.2") == [
        "mlflow[gateway]==3.17.2", "lightgbm==4.7.0"]
    assert build_lines(needs("lightgbm==4.7.0"), "3.17.2") == ["mlflow==3.17.2", "lightgbm==4.7.0"]


def test_environment_key_depends_on_what_goes_in_not_on_order():
    a = env_key(["mlflow==3.17.2", "lightgbm==4.7.0"], (), "python:3.11.7")
    assert a == env_key(["lightgbm==4.7.0", "mlflow==3.17.2"], (), "python:3.11.7")
    assert a != env_key(["mlflow==3.17.2", "lightgbm==4.6.0"], (), "python:3.11.7")
    assert a != env_key(["mlflow==3.17.2", "lightgbm==4.7.0"], (), "image:sha256:1")
    assert a != env_key(["mlflow==3.17.2", "lightgbm==4.7.0"], (("constraints.txt", "numpy<3"),), "python:3.11.7")


def _env(key: str, size: int, last_used: float) -> EnvInfo:
    return EnvInfo(key, f"/cache/{key}", size, 0.0, 1.0, last_used)


def test_clean_up_removes_idle_then_least_recently_used_past_the_cap_but_never_one_in_use():
    now, day = 100 * 86400.0, 86400.0
    envs = [_env("old", 5, now - 20 * day), _env("serving", 50, now - 30 * day), _env("a", 30, now - 2 * day),
            _env("b", 30, now - 1 * day), _env("c", 30, now)]
    chosen = to_prune(envs, {"serving"}, now, max_idle=14 * day, max_bytes=120)
    assert [(e.key, why) for e, why in chosen] == [("old", "idle"), ("a", "size")]
    assert to_prune(envs, {"serving"}, now, max_idle=30 * day, max_bytes=10**9) == []


def test_installer_failures_become_one_line_with_its_reason():
    uv_output = ("Using Python 3.11.7 environment at: /cache/x\n"
                 "  × No solution found when resolving dependencies:\n"
                 "  ╰─▶ Because mlops-toolkit-no-such-package was not found in the package registry and you require\n"
                 "      mlops-toolkit-no-such-package==0.0.1, we can conclude that your requirements are unsatisfiable.\n")
    reason = failure_reason(uv_output)
    assert "\n" not in reason and reason.startswith("No solution found when resolving dependencies:")
    assert "mlops-toolkit-no-such-package was not found" in reason
    plain = failure_reason("error: No solution found\n  cause: Because x was not found we can conclude that it fails\n")
    assert plain == "No solution found cause: Because x was not found we can conclude that it fails"


def test_uv_uses_the_index_pip_is_configured_with_and_never_downloads_python():
    env = uv_environment({"PIP_INDEX_URL": "https://mirror.example/simple"})
    assert env["UV_DEFAULT_INDEX"] == "https://mirror.example/simple" and env["UV_PYTHON_DOWNLOADS"] == "never"
    assert uv_environment({"PIP_INDEX_URL": "https://a/simple", "UV_DEFAULT_INDEX": "https://b/simple"})[
        "UV_DEFAULT_INDEX"] == "https://b/simple"
