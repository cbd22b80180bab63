"""``mlops doctor``: is everything the toolkit needs reachable?"""

from __future__ import annotations

import sys

import click

from mlops_toolkit.cli.common import (
    echo_json,
    echo_table,
    json_option,
    tracking_uri_option,
)
from mlops_toolkit.ops.doctor import all_required_ok, run_checks


@click.command()
@tracking_uri_option()
@click.option("--require-docker", is_flag=True, help="Fail when no Docker engine answers.")
@json_option
def doctor(require_docker: bool, as_json: bool) -> None:
    """Check tracking server, registry, artifact store and Docker; exit 1 if a required check fails."""
    results = run_checks(require_docker=require_docker)
    if as_json:
        echo_json(results)
    else:
        echo_table(
            ["CHECK", "STATUS", "DETAIL"],
            [(r.name, "ok" if r.ok else ("FAIL" if r.required else "warn"), r.detail) for r in results],
        )
    if not all_required_ok(results):
        sys.exit(1)
