"""``python -m mlops_autoserve.gateway [OPTIONS]``: ``mlops gateway`` without the ``mlops`` root
command, which configures MLflow for every command and so imports it (2.3 s here) although
a gateway never uses it. The watcher starts its gateway this way: a gateway that died
answers again sooner. Same options; a bad one is one line on stderr, exit 2."""

from __future__ import annotations

import sys

import click

from mlops_autoserve.cli import gateway
from mlops_toolkit.errors import MlopsError


def main() -> None:
    try:
        gateway.main(prog_name="mlops gateway", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort:
        sys.exit(130)
    except MlopsError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
