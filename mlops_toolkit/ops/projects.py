"""Spoke projects: each team keeps its DAGs in its own folder; the hub validates and publishes them.

A project folder holds ``project.json`` (name, owners, team, environments, defaults),
``dags/`` (every DAG id starts with ``<name>_``) and ``tests/``. ``new_project`` scaffolds
one, ``validate`` parses its DAGs with Airflow's own ``DagBag``, ``deploy`` publishes it and
``rollback`` undoes the last deploy.

Publishing, per environment, under a root R::

    R/ENV/NAME -> .NAME.releases/<timestamp>-<random>   (a relative symlink)
    R/ENV/.NAME.releases/<release>/{project.json,dags/,release.json}
    R/ENV/.NAME.releases/history.json                   (the live releases, oldest first)
    R/ENV/.airflowignore                                (.*.releases/)

A release is copied, then validated as copied, then the symlink is switched by renaming a
new symlink over it (``os.replace``): Airflow sees the old DAG files or the new ones, never a
mix. The last five releases are kept, and every one still on the rollback stack.

Airflow walks subfolders of its dags folder and follows symlinks, so ``R/ENV`` can be an
environment's Airflow dags folder or a subfolder of it (``AIRFLOW__CORE__DAGS_FOLDER``).
The ``.airflowignore`` written there (glob syntax, Airflow's default) keeps Airflow out of the
releases folders: without it each DAG would be found twice, through the link and in its
release. One Airflow should read one environment: the same project deployed to dev and
prod has the same DAG ids in both.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import io
import json
import logging
import os
import re
import secrets
import shutil
import string
import sys
import warnings
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

from mlops_toolkit import audit, governance
from mlops_toolkit.errors import NotFoundError, ValidationError

NAME_PATTERN = re.compile(r"[a-z][a-z0-9_-]{0,63}")
MANIFEST = "project.json"
RELEASE_FILE = "release.json"
HISTORY_FILE = "history.json"
KEEP_RELEASES = 5
POLICY_ACTION = "project.deploy"  # the policy's one action for deploys and rollbacks
IGNORE_RELEASES = ".*.releases/"  # glob: the releases folders, at any depth
DEFAULTS = {"schedule": "@daily", "retries": 2}
_REQUIRED = {"name": str, "owners": list, "team": str, "environments": list}
_OPTIONAL = {"defaults": dict, "description": str}


class ProjectInvalid(ValidationError):
    """A project the hub will not publish; ``problems`` lists every reason."""

    def __init__(self, project: str, problems: Sequence[str]) -> None:
        super().__init__(f"project {project} is not valid: {'; '.join(problems)}")
        self.problems = list(problems)


@dataclasses.dataclass(frozen=True)
class Manifest:
    name: str
    owners: tuple[str, ...]
    team: str
    environments: tuple[str, ...]
    defaults: dict


@dataclasses.dataclass(frozen=True)
class ValidProject:
    folder: Path
    manifest: Manifest
    dags: dict[str, str]  # dag id -> file, relative to the project folder


@dataclasses.dataclass(frozen=True)
class Publication:
    """A published project: the release ``R/ENV/NAME`` points at, when and by whom it went live,
    where a rollback would take it (``previous``)."""

    name: str
    env: str
    link: Path
    release: str
    previous: str | None
    deployed_at: str
    deployed_by: str
    dags: tuple[str, ...]
    replaced: str | None = None  # what the link pointed at before this deploy or rollback


# --- names and manifests ---------------------------------------------------------------

def check_name(name: object) -> str:
    """A name that is safe as a folder, a DAG id prefix and a file name on every system."""
    problem = _name_problem(name)
    if problem:
        raise ValidationError(f"project {problem}")
    return name


def _name_problem(name: object) -> str | None:
    if isinstance(name, str) and NAME_PATTERN.fullmatch(name):
        return None
    return (f"name must be lowercase letters, digits, '_' or '-', start with a letter and have at most "
            f"64 characters, got {name!r}")


def manifest_problems(data: object) -> list[str]:
    """Every way ``data`` is not a manifest: a typo must fail here, not in Airflow."""
    if not isinstance(data, dict):
        return [f"{MANIFEST} must be a JSON object"]
    problems = [f"{key} is required" for key in _REQUIRED if key not in data]
    problems += [f"unknown key {key!r}" for key in sorted(set(data) - set(_REQUIRED) - set(_OPTIONAL))]
    problems += [f"{key} must be a {kind.__name__}" for key, kind in {**_REQUIRED, **_OPTIONAL}.items()
                 if key in data and not isinstance(data[key], kind)]
    if problems:
        return problems
    if problem := _name_problem(data["name"]):
        problems.append(problem)
    if not data["owners"] or not all(isinstance(o, str) and o.strip() for o in data["owners"]):
        problems.append("owners must be a non-empty list of user names")
    if not data["environments"] or not all(e in governance.ENVIRONMENTS for e in data["environments"]):
        problems.append(f"environments must be a non-empty list of {', '.join(governance.ENVIRONMENTS)}")
    return problems + _defaults_problems(data.get("defaults", {}))


def _defaults_problems(defaults: dict) -> list[str]:
    problems = []
    if "schedule" in defaults and not (defaults["schedule"] is None or isinstance(defaults["schedule"], str)):
        problems.append("defaults.schedule must be a string (cron or preset) or null")
    retries = defaults.get("retries", 0)
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        problems.append("defaults.retries must be an integer >= 0")
    return problems


def load_manifest(folder: Path) -> Manifest:
    """The project's manifest, checked; ProjectInvalid names every problem."""
    path = Path(folder) / MANIFEST
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ProjectInvalid(str(folder), [f"cannot read {path}: {exc.strerror or exc}"]) from None
    except ValueError as exc:
        raise ProjectInvalid(str(folder), [f"{MANIFEST} is not valid JSON: {exc}"]) from None
    problems = manifest_problems(data)
    if problems:
        raise ProjectInvalid(str(folder), problems)
    return Manifest(data["name"], tuple(data["owners"]), data["team"], tuple(data["environments"]),
                    dict(data.get("defaults", {})))


# --- scaffolding ------------------------------------------------------------------------

_DAG_TEMPLATE = string.Template('''\
"""$name: train a model, register it, move Production only when it beats the holder.

Scaffolded by `mlops project new`: the hub checks this folder with `mlops project validate`
and publishes it with `mlops project deploy`. Schedule, retries, owners and team come from
project.json (published beside dags/); every DAG id starts with "${name}_".
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.sdk import dag, task

PROJECT = json.loads((Path(__file__).resolve().parents[1] / "project.json").read_text())
DEFAULTS = PROJECT.get("defaults", {})


@dag(dag_id="${name}_train", schedule=DEFAULTS.get("schedule", "@daily"),
     start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False, max_active_runs=1,
     default_args={"owner": ",".join(PROJECT["owners"]), "retries": DEFAULTS.get("retries", 2),
                   "retry_delay": timedelta(minutes=5)},
     params={"model": "$name"}, tags=["mlops", "project:$name", f"team:{PROJECT['team']}"])
def ${ident}_train():
    @task(execution_timeout=timedelta(minutes=30))
    def train_and_promote(params=None) -> dict:
        """One candidate per run; Production moves only if it beats the holder on val_f1."""
        import mlops_toolkit as mt
        from sklearn.datasets import load_iris
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import f1_score
        from sklearn.model_selection import train_test_split

        X, y = load_iris(return_X_y=True, as_frame=True)
        X_train, X_val, y_train, y_val = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
        mt.configure(experiment="$name")
        with mt.start_run("$name-logreg", params={"C": 1.0}) as run:
            model = LogisticRegression(C=1.0, max_iter=300).fit(X_train, y_train)
            run.log_metrics({"val_f1": f1_score(y_val, model.predict(X_val), average="macro")})
            version = run.log_model(model, register_as=params["model"], input_example=X_train[:5])
        decision = mt.promote_best(params["model"], metric="val_f1", alias="Production")
        return {"version": version, "decision": str(decision)}

    train_and_promote()


${ident}_train()
''')

_TEST_TEMPLATE = string.Template('''\
"""The project's DAG files load in Airflow's own DagBag: what `mlops project validate` checks."""

from pathlib import Path

from airflow.dag_processing.dagbag import DagBag

DAGS = Path(__file__).resolve().parents[1] / "dags"


def test_dags_load_without_import_errors():
    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    assert "${name}_train" in bag.dag_ids
''')


def new_project(name: str, parent: Path, *, owners: Sequence[str] = (), team: str | None = None) -> Path:
    """Scaffold ``parent/name``: a manifest, one DAG that calls the toolkit, and its test."""
    name = check_name(name)
    folder = Path(parent) / name
    manifest = {"name": name, "owners": list(owners) or [governance.acting_user()], "team": team or name,
                "environments": list(governance.ENVIRONMENTS), "defaults": dict(DEFAULTS)}
    problems = manifest_problems(manifest)
    if problems:
        raise ValidationError(f"cannot scaffold {name}: {'; '.join(problems)}")
    try:
        folder.mkdir(parents=True)
    except FileExistsError:
        raise ValidationError(f"{folder} already exists: not overwriting it") from None
    ident = name.replace("-", "_")
    files = {MANIFEST: json.dumps(manifest, indent=2) + "\n",
             f"dags/{name}_train.py": _DAG_TEMPLATE.substitute(name=name, ident=ident),
             f"tests/test_{ident}.py": _TEST_TEMPLATE.substitute(name=name)}
    for relative, text in files.items():
        (folder / relative).parent.mkdir(exist_ok=True)
        (folder / relative).write_text(text)
    return folder


# --- validation -------------------------------------------------------------------------

def validate(folder: Path) -> ValidProject:
    """Manifest, DAG files as Airflow parses them, DAG id prefixes, owners known to the policy."""
    folder = Path(folder)
    manifest = load_manifest(folder)
    problems = _owner_problems(manifest.owners)
    dags, errors = load_dags(folder / "dags", relative_to=folder)
    problems += [f"{file}: {error}" for file, error in sorted(errors.items())]
    problems += [f"DAG id {dag_id!r} ({file}) does not start with {manifest.name}_"
                 for dag_id, file in sorted(dags.items()) if not dag_id.startswith(f"{manifest.name}_")]
    if not dags and not errors:
        problems.append("no DAG in dags/")
    if problems:
        raise ProjectInvalid(manifest.name, problems)
    return ValidProject(folder, manifest, dags)


def _owner_problems(owners: Sequence[str]) -> list[str]:
    """With a policy file, owners must be users it knows: a project nobody can answer for is refused."""
    if not os.environ.get("MLOPS_POLICY_FILE"):
        return []
    policy = governance.load_policy()
    unknown = [o for o in owners if o not in policy.users]
    return [f"owner(s) {', '.join(unknown)} not in the policy's users ({policy.source})"] if unknown else []


def load_dags(dags_folder: Path, relative_to: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Parse a folder with Airflow's DagBag: (dag id -> file, file -> one-line import error)."""
    if not dags_folder.is_dir():
        return {}, {str(dags_folder.relative_to(relative_to)): "no such folder"}
    with _parsing():
        from airflow.dag_processing.dagbag import DagBag

        # safe_mode=False: every .py file is imported, also one that does not mention "airflow".
        bag = DagBag(dag_folder=str(dags_folder), safe_mode=False)
    dags = {dag_id: _relative(dag.fileloc, relative_to) for dag_id, dag in bag.dags.items()}
    errors = {_relative(file, relative_to): exception_line(text) for file, text in bag.import_errors.items()}
    return dags, errors


def _relative(path: str, base: Path) -> str:
    """``path`` as the project names it (no symlink resolved: a linked file stays under dags/)."""
    try:
        return str(Path(os.path.abspath(path)).relative_to(os.path.abspath(base)))
    except ValueError:
        return path


@contextlib.contextmanager
def _parsing() -> Iterator[None]:
    """Quiet and read-only while Airflow imports DAG files: it logs each failure with its traceback
    (structlog, to stdout) and DAG files may print, but the report is ours, one line per
    problem; and no __pycache__ is left in the folder checked or the release published."""
    previous_disable, previous_bytecode = logging.root.manager.disable, sys.dont_write_bytecode
    logging.disable(logging.CRITICAL)
    sys.dont_write_bytecode = True
    try:
        with (warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()),
              contextlib.redirect_stderr(io.StringIO())):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous_disable)
        sys.dont_write_bytecode = previous_bytecode


def exception_line(text: str) -> str:
    """The line that names the exception in a traceback (the last one when chained)."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    found, in_traceback = None, False
    for line in lines:
        if line.startswith("Traceback "):
            in_traceback = True
        elif in_traceback and not line[0].isspace():
            found, in_traceback = line, False
    return (found or (lines[0] if lines else "unknown error")).strip()


# --- policy -----------------------------------------------------------------------------

def authorize(event: str, env: str, **context: object) -> governance.Decision:
    """``project.deploy`` for the target environment (a deploy names it; MLOPS_ENVIRONMENT is
    where the command runs). A refusal is audited as ``event``."""
    return governance.require(POLICY_ACTION, in_environment=env, audit_as=event, env=env, **context)


# --- publishing -------------------------------------------------------------------------

def deploy(folder: Path, env: str, root: Path) -> Publication:
    """Publish the project to ``root/env/NAME`` atomically; the previous release stays for rollback."""
    manifest = load_manifest(folder)
    if _check_env(env) not in manifest.environments:
        raise ValidationError(f"project {manifest.name} does not deploy to {env} "
                              f"(its environments: {', '.join(manifest.environments)})")
    # Before any of the project's code runs here: a refused user's DAG files are never imported.
    decision = authorize("project.deploy", env, project=manifest.name)
    env_dir = _prepare(Path(root) / env)
    link = _link(env_dir, manifest.name)
    with _locked(env_dir, manifest.name):
        release = _build_release(Path(folder), _releases(env_dir, manifest.name), decision)
        previous = _target(link)
        _switch(link, release.name)
        history = [*_history(env_dir, manifest.name), _entry(release.name, decision, "deploy")]
        _save_history(env_dir, manifest.name, _prune(env_dir, manifest.name, history))
    audit.record("project.deploy", outcome="done", decision=decision,
                 reason=f"{manifest.name} in {env}: {previous or 'none'} -> {release.name}",
                 project=manifest.name, env=env, release=release.name, previous=previous)
    return dataclasses.replace(describe(link), replaced=previous)


def rollback(name: str, env: str, root: Path) -> Publication:
    """Point ``root/env/NAME`` back at the release that was live before the current one."""
    env_dir = Path(root) / _check_env(env)
    link = _link(env_dir, check_name(name))
    decision = authorize("project.rollback", env, project=name)
    if not link.is_symlink():
        raise NotFoundError(f"{name} is not deployed to {env} under {root}")
    with _locked(env_dir, name):
        history, current = _history(env_dir, name), _target(link)
        if not history or history[-1]["release"] != current:
            raise ValidationError(f"{link} points at {current}, not at its last deployed release: "
                                  f"changed by hand? deploy again")
        if len(history) < 2:
            raise NotFoundError(f"{name} in {env} has no previous release to roll back to (live: {current})")
        target = history[-2]["release"]
        _switch(link, target)
        _save_history(env_dir, name, [*history[:-2], _entry(target, decision, "rollback")])
    audit.record("project.rollback", outcome="done", decision=decision,
                 reason=f"{name} in {env}: {current} -> {target}", project=name, env=env, release=target,
                 previous=current)
    return dataclasses.replace(describe(link), replaced=current)


def list_publications(root: Path) -> list[Publication]:
    """Every published project under ``root``, by environment (dev, stage, prod) then name."""
    found = []
    for env in governance.ENVIRONMENTS:
        env_dir = Path(root) / env
        if env_dir.is_dir():
            found += [describe(p) for p in sorted(env_dir.iterdir())
                      if p.is_symlink() and _releases(env_dir, p.name).is_dir()]
    return found


def describe(link: Path) -> Publication:
    """What a published link points at; ``previous`` is where a rollback would take it."""
    env_dir, name, release = link.parent, link.name, _target(link)
    history = _history(env_dir, name)
    meta = _release_meta(_releases(env_dir, name) / release)
    live = history[-1] if history and history[-1]["release"] == release else {}
    previous = history[-2]["release"] if live and len(history) > 1 else None
    return Publication(name, env_dir.name, link, release, previous, live.get("at", meta.get("created_at", "")),
                       live.get("user", meta.get("created_by", "")), tuple(meta.get("dags", ())))


def _release_meta(release: Path) -> dict:
    try:
        return json.loads((release / RELEASE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _target(link: Path) -> str | None:
    """The release a link points at (its target's last part), None when there is no link."""
    return os.readlink(link).rstrip("/").rsplit("/", 1)[-1] if link.is_symlink() else None


def _check_env(env: str) -> str:
    if env not in governance.ENVIRONMENTS:
        raise ValidationError(f"environment must be one of {', '.join(governance.ENVIRONMENTS)}, got {env!r}")
    return env


def _prepare(env_dir: Path) -> Path:
    """The environment's folder, with the .airflowignore that hides the releases from Airflow."""
    env_dir.mkdir(parents=True, exist_ok=True)
    ignore = env_dir / ".airflowignore"
    lines = ignore.read_text().splitlines() if ignore.exists() else []
    if IGNORE_RELEASES not in lines:
        with ignore.open("a") as out:
            out.write(f"# mlops project deploy: releases are reached through their symlink only\n{IGNORE_RELEASES}\n")
    return env_dir


def _releases(env_dir: Path, name: str) -> Path:
    return env_dir / f".{name}.releases"


def _link(env_dir: Path, name: str) -> Path:
    link = env_dir / name
    if link.exists() and not link.is_symlink():
        raise ValidationError(f"{link} exists and is not a symlink: it was not published by mlops project deploy")
    return link


@contextlib.contextmanager
def _locked(env_dir: Path, name: str) -> Iterator[None]:
    """One deploy or rollback of a project at a time per environment: the history stays a stack."""
    with open(env_dir / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _build_release(folder: Path, releases: Path, decision: governance.Decision) -> Path:
    """Copy dags/ and the manifest, validate the copy (what goes live is what was checked),
    then write release.json: a release without it is an unfinished one."""
    stamp = datetime.now(UTC)
    release = releases / f"{stamp:%Y%m%dT%H%M%S}.{stamp.microsecond // 1000:03d}Z-{secrets.token_hex(3)}"
    release.mkdir(parents=True)
    try:
        if (folder / "dags").is_dir():  # else validate names what is missing
            shutil.copytree(folder / "dags", release / "dags", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        shutil.copy2(folder / MANIFEST, release / MANIFEST)
        project = validate(release)
    except BaseException:
        shutil.rmtree(release, ignore_errors=True)
        raise
    meta = {"project": project.manifest.name, "release": release.name, "dags": sorted(project.dags),
            "created_at": _now(), "created_by": decision.user, "source": str(folder.resolve())}
    (release / RELEASE_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return release


def _switch(link: Path, release: str) -> None:
    """Rename a new symlink over ``link``: atomic, so readers see one release or the other.

    The new link is made inside the releases folder (which Airflow ignores) with a target
    relative to the link's folder, then moved: the tree can be mounted anywhere."""
    releases = _releases(link.parent, link.name)
    temporary = releases / f".switch-{secrets.token_hex(4)}"
    os.symlink(f"{releases.name}/{release}", temporary)
    try:
        os.replace(temporary, link)
    except OSError:
        temporary.unlink(missing_ok=True)
        raise


def _entry(release: str, decision: governance.Decision, action: str) -> dict:
    return {"release": release, "at": _now(), "user": decision.user, "action": action}


def _history(env_dir: Path, name: str) -> list[dict]:
    """The releases that went live, oldest first: rollback pops the last one."""
    path = _releases(env_dir, name) / HISTORY_FILE
    return json.loads(path.read_text()) if path.exists() else []


def _save_history(env_dir: Path, name: str, history: list[dict]) -> None:
    path = _releases(env_dir, name) / HISTORY_FILE
    temporary = path.with_name(f".{HISTORY_FILE}.{secrets.token_hex(4)}")
    temporary.write_text(json.dumps(history, indent=2) + "\n")
    os.replace(temporary, path)


def _prune(env_dir: Path, name: str, history: list[dict]) -> list[dict]:
    """Keep the newest releases and the last ones on the rollback stack; drop unfinished ones."""
    releases = _releases(env_dir, name)
    finished = sorted(p.name for p in releases.iterdir() if (p / RELEASE_FILE).is_file())
    keep = set(finished[-KEEP_RELEASES:]) | {e["release"] for e in history[-KEEP_RELEASES:]}
    for path in releases.iterdir():
        if path.is_dir() and not path.is_symlink() and path.name not in keep:
            shutil.rmtree(path)
    return [e for e in history if e["release"] in keep]


__all__ = ["KEEP_RELEASES", "Manifest", "ProjectInvalid", "Publication", "ValidProject", "authorize",
           "check_name", "deploy", "describe", "exception_line", "list_publications", "load_dags",
           "load_manifest", "manifest_problems", "new_project", "rollback", "validate"]
