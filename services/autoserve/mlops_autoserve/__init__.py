"""mlops_autoserve: keep one ``mlflow models serve`` deployment per registered model version
that some alias points at, and route every (model, alias) to it through one gateway.

Modelled on a Kubernetes controller: desired state from the registry, observed state from
the runtime, a level-triggered reconcile that is idempotent and safe to restart.
"""
