"""``mlops project``: team projects (spokes) scaffolded, validated and published by the hub.

No MLflow server is needed: these commands read and write folders, parse DAG files with
Airflow's DagBag, and check the policy file (``MLOPS_POLICY_FILE``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from mlops_toolkit.cli.common import echo_json, echo_table, json_option
from mlops_toolkit.governance import ENVIRONMENTS
from mlops_toolkit.ops import projects

folder_argument = click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
env_option = click.option("--env", "-e", "env", required=True, type=click.Choice(ENVIRONMENTS),
                          help="The environment published to.")
dags_root_option = click.option(
    "--dags-root", "-r", "root", required=True, envvar="MLOPS_DAGS_ROOT", metavar="DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="Published projects go to DIR/ENV/NAME; DIR/ENV is (part of) that environment's Airflow dags "
         "folder ($MLOPS_DAGS_ROOT).")


@click.group()
def project() -> None:
    """Team projects: scaffold, validate and publish a team's DAGs to Airflow."""


@project.command("new")
@click.argument("name")
@click.option("--dir", "parent", default=".", show_default=True, metavar="DIR",
              type=click.Path(file_okay=False, path_type=Path), help="Where the project folder is made.")
@click.option("--owner", "owners", multiple=True, metavar="USER",
              help="An owner (repeatable; default: the acting user).")
@click.option("--team", metavar="TEAM", help="The owning team (default: NAME).")
def new_cmd(name: str, parent: Path, owners: tuple[str, ...], team: str | None) -> None:
    """Scaffold DIR/NAME: project.json, one DAG that calls the toolkit, its test."""
    folder = projects.new_project(name, parent, owners=owners, team=team)
    click.echo(f"created {folder}: {projects.MANIFEST}, dags/{name}_train.py, tests/ "
               f"(next: mlops project validate {folder})")


@project.command("validate")
@folder_argument
def validate_cmd(folder: Path) -> None:
    """Check FOLDER: manifest, DAG files parsed by Airflow, DAG id prefixes, owners in the policy."""
    valid = projects.validate(folder)
    count = len(valid.dags)
    click.echo(f"ok: {valid.manifest.name} ({count} DAG{'' if count == 1 else 's'}: {', '.join(sorted(valid.dags))})")


@project.command("deploy")
@folder_argument
@env_option
@dags_root_option
def deploy_cmd(folder: Path, env: str, root: Path) -> None:
    """Validate FOLDER and publish it to DIR/ENV/NAME in one atomic switch (policy: project.deploy)."""
    published = projects.deploy(folder, env, root)
    click.echo(f"deployed {published.name} to {env}: {published.link} -> {published.release} "
               f"(previous: {published.replaced or 'none'})")


@project.command("rollback")
@click.argument("name")
@env_option
@dags_root_option
def rollback_cmd(name: str, env: str, root: Path) -> None:
    """Point DIR/ENV/NAME back at the release live before the current one (policy: project.deploy)."""
    published = projects.rollback(name, env, root)
    click.echo(f"rolled back {published.name} in {env}: {published.link} -> {published.release} "
               f"(was: {published.replaced})")


@project.command("list")
@dags_root_option
@json_option
def list_cmd(root: Path, as_json: bool) -> None:
    """Every published project: environment, release, when it went live, its DAGs."""
    published = projects.list_publications(root)
    if as_json:
        echo_json([{**dataclasses.asdict(p), "link": str(p.link)} for p in published])
    else:
        echo_table(["ENV", "NAME", "RELEASE", "DEPLOYED AT", "DAGS"],
                   [(p.env, p.name, p.release, p.deployed_at, ", ".join(p.dags)) for p in published],
                   f"no projects under {root}")
