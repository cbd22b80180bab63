"""The ``mlops`` command line: aliases, models, promotion, team projects and health checks.

Shaped like MLflow's own click CLI: one root group with global options, a sub-group per
noun. Every toolkit error becomes one line on stderr with exit code 2 for bad input or
unknown names and 1 for an unreachable server; no traceback unless MLOPS_DEBUG=1.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from importlib.metadata import entry_points

import click

from mlops_toolkit import __version__
from mlops_toolkit.cli.alias import alias
from mlops_toolkit.cli.bootstrap import bootstrap
from mlops_toolkit.cli.common import tracking_uri_option
from mlops_toolkit.cli.demo import demo
from mlops_toolkit.cli.doctor import doctor
from mlops_toolkit.cli.govern import approve, audit_group, block, unblock, whoami
from mlops_toolkit.cli.models import models
from mlops_toolkit.cli.project import project
from mlops_toolkit.cli.promote import promote
from mlops_toolkit.cli.rollout import rollout
from mlops_toolkit.cli.shadow import shadow
from mlops_toolkit.errors import MlopsError


class _ToolkitGroup(click.Group):
    """Root group: the one place where exceptions become a readable line, and where the
    service's commands join (from the ``mlops.commands`` entry point, on first use: loading
    them at import would make ``import mlops_autoserve.cli`` import itself half-way)."""

    _plugins_loaded = False

    def list_commands(self, ctx: click.Context) -> list[str]:
        self.load_plugins()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        self.load_plugins()
        return super().get_command(ctx, name)

    def load_plugins(self) -> None:
        """Commands registered under the ``mlops.commands`` entry point (autoserve, gateway,
        serve from the serving service): loaded by name, so the library never imports the service."""
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for entry in entry_points(group="mlops.commands"):
            if entry.name in self.commands:
                continue
            try:
                self.add_command(entry.load(), entry.name)
            except ImportError as exc:  # pragma: no cover - a broken plugin must not break `mlops`
                print(f"warning: command {entry.name!r} ({entry.value}) could not be loaded: {exc}", file=sys.stderr)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:  # a subcommand's bad option or argument
            raise _UsageLine(exc.format_message(), exc.ctx) from None
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except MlopsError as exc:
            raise _LineError(str(exc), exc.exit_code) from None
        except KeyboardInterrupt:
            raise click.Abort() from None
        except Exception as exc:
            if os.environ.get("MLOPS_DEBUG"):
                traceback.print_exc()
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise _LineError(
                f"unexpected {type(exc).__name__}: {detail} (set MLOPS_DEBUG=1 for the traceback)", 1
            ) from None


class _UsageLine(click.UsageError):
    """Bad usage in one line (click's default adds the usage text and a hint line)."""

    def show(self, file=None) -> None:
        hint = f" (see '{self.ctx.command_path} --help')" if self.ctx is not None else ""
        click.echo(f"Error: {self.format_message()}{hint}", err=True, file=file)


class _LineError(click.ClickException):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@click.group(cls=_ToolkitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="mlops")
@tracking_uri_option(root=True)
def main() -> None:
    """Script-first MLOps on MLflow: models, aliases, promotion and serving."""
    # MLflow prints run links and INFO lines meant for notebooks; a command prints its own.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.getLogger("mlflow").setLevel(logging.WARNING)


main.add_command(alias)
main.add_command(models)
main.add_command(promote)
main.add_command(doctor)
main.add_command(demo)
main.add_command(bootstrap)
main.add_command(shadow)
main.add_command(rollout)
for _command in (approve, block, unblock, whoami, audit_group, project):
    main.add_command(_command)
