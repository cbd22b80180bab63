"""Options and output helpers shared by every command."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, is_dataclass
from typing import Any

import click

from mlops_toolkit import config


def _configure_from_root(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """Each invocation starts from the environment, then applies the root ``--tracking-uri``."""
    config.configure(tracking_uri=value or None)


def _override_tracking_uri(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value:
        config.update(tracking_uri=value)


def tracking_uri_option(root: bool = False) -> Callable:
    """``--tracking-uri`` on the root (reads $MLFLOW_TRACKING_URI) and on every command."""
    return click.option(
        "--tracking-uri",
        envvar="MLFLOW_TRACKING_URI" if root else None,
        expose_value=False,
        is_eager=True,
        callback=_configure_from_root if root else _override_tracking_uri,
        metavar="URI",
        help="MLflow tracking server (default: $MLFLOW_TRACKING_URI or http://127.0.0.1:5000).",
    )


def model_option(required: bool = False) -> Callable:
    return click.option(
        "--model",
        "-m",
        "model",
        required=required,
        metavar="NAME",
        help="Registered model (default: $MLOPS_MODEL_NAME).",
    )


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def command(group: click.Group, name: str | None = None, **kwargs: Any) -> Callable:
    """A sub-command that also accepts ``--tracking-uri``."""

    def decorate(fn: Callable) -> click.Command:
        return group.command(name, **kwargs)(tracking_uri_option()(fn))

    return decorate


def echo_json(value: Any) -> None:
    click.echo(json.dumps(to_jsonable(value), indent=2, sort_keys=False))


def to_jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(asdict(value))
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    return value


def echo_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], empty: str = "(none)") -> None:
    """A plain aligned table; ``empty`` when there are no rows."""
    text_rows = [["" if c is None else str(c) for c in row] for row in rows]
    if not text_rows:
        click.echo(empty)
        return
    widths = [max(len(h), *(len(r[i]) for r in text_rows)) for i, h in enumerate(headers)]
    for row in [list(headers), *text_rows]:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


class PortRange(click.ParamType):
    """``LOW-HIGH`` as ``(low, high)``: a type, so the value may come from an env var too."""

    name = "LOW-HIGH"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        try:
            low, high = (int(p) for p in str(value).split("-"))
        except ValueError:
            self.fail("expected LOW-HIGH, e.g. 18100-18199", param, ctx)
        if not 1024 <= low <= high <= 65535:
            self.fail("expected 1024 <= LOW <= HIGH <= 65535", param, ctx)
        return low, high


def port_range_option(default: str) -> Callable:
    """``--port-range LOW-HIGH``: ports for model deployments."""
    return click.option("--port-range", type=PortRange(), default=default, show_default=True,
                        metavar="LOW-HIGH", help="Ports for the model deployments.")
