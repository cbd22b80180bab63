"""What a model version needs to run, and whether a serving environment already has it.

MLflow records a model's pip requirements (``requirements.txt``) and Python version
(``python_env.yaml``) beside the model. A version whose requirements the serving
environment satisfies is served from it as is; any other is served from an environment
built from its requirements (:mod:`envstore`), keyed by what goes into it.

The ``mlflow`` requirement itself is never a reason to build: whichever MLflow serves
loads the model (as ``--env-manager local`` always did), and an environment that is built
gets the serving MLflow's version, so every deployment runs the scoring server we test.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

REQUIREMENTS_FILE = "requirements.txt"
PYTHON_ENV_FILE = "python_env.yaml"
MLFLOW_NAMES = frozenset({"mlflow", "mlflow-skinny"})
_FILE_OPTION = re.compile(r"^(-r|-c|--requirement|--constraint)[ =]\s*(\S+)\s*$")


@dataclass(frozen=True)
class ModelNeeds:
    """A version's recorded requirements: lines as logged, files they refer to, its Python."""

    requirements: tuple[str, ...] = ()
    files: tuple[tuple[str, str], ...] = ()  # (name, content) of files named by -r / -c lines
    python: str | None = None  # e.g. "3.11.7" (python_env.yaml)

    @property
    def recorded(self) -> bool:
        return bool(self.requirements)


@dataclass(frozen=True)
class Interpreter:
    """A serving environment: its Python version and installed distributions."""

    python: str  # "3.11.7"
    packages: Mapping[str, str]  # canonical name -> version

    @property
    def mlflow(self) -> str | None:
        return self.packages.get("mlflow") or self.packages.get("mlflow-skinny")

    def markers(self) -> dict[str, str]:
        env = default_environment()  # this machine's platform; the Python version is the environment's
        env["python_full_version"] = self.python
        env["python_version"] = ".".join(self.python.split(".")[:2])
        return env


# The same listing runs here (process runtime) and inside a serving image (Docker runtime).
LIST_INSTALLED = (
    "import importlib.metadata as m, json, platform\n"
    "print(json.dumps({'python': platform.python_version(), 'packages': "
    "{d.metadata['Name']: d.version for d in m.distributions() if d.metadata['Name']}}))"
)


def this_interpreter() -> Interpreter:
    packages = {d.metadata["Name"]: d.version for d in importlib.metadata.distributions() if d.metadata["Name"]}
    return interpreter_from({"python": platform.python_version(), "packages": packages})


def interpreter_from(listing: Mapping) -> Interpreter:
    """From the JSON ``LIST_INSTALLED`` prints."""
    packages = {canonicalize_name(name): str(version) for name, version in dict(listing["packages"]).items()}
    return Interpreter(str(listing["python"]), packages)


def read_needs(tracking_uri: str, model: str, version: int) -> ModelNeeds:
    """Download the version's requirements.txt (and what it refers to) and python_env.yaml.

    A model logged without them (very old MLflow, or by hand) needs nothing we can know of.
    """
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    def fetch(name: str, folder: str) -> str | None:
        try:
            path = download_artifacts(artifact_uri=f"models:/{model}/{version}/{name}", dst_path=folder,
                                      tracking_uri=tracking_uri)
        except (MlflowException, OSError):
            return None
        return Path(path).read_text()

    with tempfile.TemporaryDirectory() as folder:
        text = fetch(REQUIREMENTS_FILE, folder)
        if text is None:
            return ModelNeeds()
        lines = requirement_lines(text)
        files = []
        for line in lines:
            match = _FILE_OPTION.match(line)
            if match and "/" not in match.group(2).strip("./"):
                content = fetch(match.group(2), folder)
                if content is not None:
                    files.append((match.group(2), content))
        python_env = fetch(PYTHON_ENV_FILE, folder)
    return ModelNeeds(tuple(lines), tuple(files), python_version(python_env))


def requirement_lines(text: str) -> list[str]:
    """The requirement and option lines of a requirements file (comments and blanks dropped)."""
    lines = []
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def python_version(python_env_yaml: str | None) -> str | None:
    if not python_env_yaml:
        return None
    import yaml

    try:
        data = yaml.safe_load(python_env_yaml)
    except yaml.YAMLError:
        return None
    value = data.get("python") if isinstance(data, dict) else None
    return str(value) if value else None


def unmet(needs: ModelNeeds, env: Interpreter) -> list[str]:
    """The requirement lines ``env`` does not satisfy (mlflow's own pin excepted).

    An option line (``-c constraints.txt``, ``--index-url``) or a URL requirement cannot be
    checked against installed versions: it counts as unmet, so such a model gets an
    environment built exactly as it was logged.
    """
    markers = env.markers()
    missing = []
    for line in needs.requirements:
        if line.startswith("-"):
            missing.append(line)
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            missing.append(line)
            continue
        if requirement.marker is not None and not requirement.marker.evaluate(markers):
            continue
        name = canonicalize_name(requirement.name)
        if name in MLFLOW_NAMES:
            continue
        installed = env.packages.get(name)
        if requirement.url or installed is None or not requirement.specifier.contains(installed, prereleases=True):
            missing.append(line)
    return missing


def build_lines(needs: ModelNeeds, mlflow_version: str) -> list[str]:
    """The requirements an environment is built from: the model's, with the serving MLflow."""
    lines, pinned = [], False
    for line in needs.requirements:
        try:
            requirement = None if line.startswith("-") else Requirement(line)
        except InvalidRequirement:
            requirement = None
        if requirement is not None and canonicalize_name(requirement.name) in MLFLOW_NAMES:
            if not pinned:
                extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
                lines.append(f"mlflow{extras}=={mlflow_version}")
                pinned = True
            continue
        lines.append(line)
    if not pinned:
        lines.insert(0, f"mlflow=={mlflow_version}")  # the scoring server itself
    return lines


def env_key(lines: list[str], files: tuple[tuple[str, str], ...], base: str) -> str:
    """Same requirements on the same base (interpreter or image): the same environment."""
    payload = json.dumps({"requirements": sorted(lines), "files": sorted(files), "base": base,
                          "machine": platform.machine()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
