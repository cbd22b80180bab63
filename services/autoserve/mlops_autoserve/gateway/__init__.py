"""The data plane: one stable port in front of every deployment, a process of its own.

Its pieces, each a module: :mod:`.app` (the routes and the checks before a backend is asked),
:mod:`.listener` (connection cap, header timeout, keep-alive), :mod:`.limits` (the body
budget and timeout), :mod:`.proxy` (send, retry, answer cap), :mod:`.pool` (pick, eject,
re-admit), :mod:`.admin` (the admin port), :mod:`.shadows`, :mod:`.payloadlog`,
:mod:`.accounting` and :mod:`.recent` (what is counted, bounded by the route table),
:mod:`.server` (one process) and :mod:`.instances` (several on one port).
"""

from mlops_autoserve.gateway.app import Gateway
from mlops_autoserve.gateway.listener import listen
from mlops_autoserve.gateway.server import run

__all__ = ["Gateway", "listen", "run"]
