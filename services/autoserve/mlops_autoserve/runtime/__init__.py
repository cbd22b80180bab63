"""Runtimes run deployments: local processes now, Docker containers next, a cluster later.

The reconciler only uses the :class:`~mlops_autoserve.runtime.base.Runtime` surface:
``list``, ``start``, ``health`` and ``stop``.
"""

from mlops_autoserve.runtime.base import Deployment, DeploymentKey, Health, Runtime

__all__ = ["Deployment", "DeploymentKey", "Health", "Runtime", "create_runtime"]


def create_runtime(settings) -> Runtime:
    if settings.runtime == "process":
        from mlops_autoserve.runtime.process import ProcessRuntime

        return ProcessRuntime(settings)
    if settings.runtime == "docker":
        from mlops_autoserve.runtime.docker import DockerRuntime

        return DockerRuntime(settings)
    raise ValueError(f"unknown runtime {settings.runtime!r} (known: process, docker)")
