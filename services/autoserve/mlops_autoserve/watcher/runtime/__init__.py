"""Runtimes run deployments: local processes, Docker containers, or Docker Swarm services.

The reconciler only uses the :class:`~mlops_autoserve.watcher.runtime.base.Runtime` surface:
``list``, ``start``, ``health`` and ``stop``.
"""

from mlops_autoserve.watcher.runtime.base import (
    Deployment,
    DeploymentKey,
    Health,
    Runtime,
)

__all__ = ["Deployment", "DeploymentKey", "Health", "Runtime", "create_runtime"]


def create_runtime(settings) -> Runtime:
    if settings.runtime == "process":
        from mlops_autoserve.watcher.runtime.process import ProcessRuntime

        return ProcessRuntime(settings)
    if settings.runtime == "docker":
        from mlops_autoserve.watcher.runtime.docker import DockerRuntime

        return DockerRuntime(settings)
    if settings.runtime == "swarm":
        from mlops_autoserve.watcher.runtime.swarm import SwarmRuntime

        return SwarmRuntime(settings)
    raise ValueError(f"unknown runtime {settings.runtime!r} (known: process, docker, swarm)")
