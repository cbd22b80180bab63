"""``python -m mlops_toolkit.cli``: the same as the ``mlops`` script."""

from mlops_toolkit.cli import main

main()
