"""The control plane: the watcher that reads the registry and the runtime, decides, and
publishes the route table the gateway serves from.

The contract the two sides share (:mod:`mlops_autoserve.routetable`,
:mod:`mlops_autoserve.settings`, :mod:`mlops_autoserve.metrics`) stays at the package root.
"""
