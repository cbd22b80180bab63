"""Deployments as Docker Swarm services: one service per model version, its copies Swarm's tasks.

Where the Docker runtime runs one container per replica on the watcher's host, here Swarm
places the tasks on the cluster's nodes, restarts a task that dies and keeps the count the
watcher asks for (``--replicas``, or the autoscaler's; :meth:`SwarmRuntime.want`). Each
service has a health check on ``/ping`` (Swarm reports a task running only once it is
healthy, and replaces one that turns unhealthy), restart policy ``any``, ``update_config``
start-first with rollback on failure, CPU and memory limits and reservations, placement
constraints, and the Docker runtime's labels (``mlops.autoserve``, instance, model,
version, aliases), by which a restarted watcher adopts it.

How the gateway reaches a version: through each running task, never through a virtual IP.
Swarm's ingress routing mesh and its virtual IPs are built on the kernel's IPVS, which not
every host has (a kernel without ``ip_vs`` gets a published port that never answers); and
a gateway that sees every task balances, retries and ejects per task, like it does per
container. So services use ``endpoint_mode: dnsrr`` and either

* publish port 8080 of each task in ``host`` mode on a port the node picks
  (``http://<node address>:<port>``; ``127.0.0.1`` for tasks on the watcher's own node),
  for a gateway on the host (the default, and ``--docker-publish`` with a network), or
* join ``--docker-network`` (an attachable overlay) where a gateway attached to it calls
  ``http://<task address>:8080``.

Blue/green between versions stays the gateway's route flip: a new service per version, the
old one removed after draining, so ``X-Model-Version`` is always exact. Swarm mode cannot
run on a daemon with ``live-restore`` (Docker refuses both at once).
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time

from mlops_autoserve.settings import AutoserveSettings
from mlops_autoserve.watcher.envstore import ServeEnv
from mlops_autoserve.watcher.runtime.base import (
    Deployment,
    DeploymentKey,
    Endpoint,
    Health,
    ping,
)
from mlops_autoserve.watcher.runtime.docker import (
    CONTAINER_PORT,
    LABEL,
    LOG_OPTIONS,
    instance_id,
    read_labels,
    remove_stale,
    require_local_image,
    serve_command,
    serving_environment,
    usable,
)
from mlops_toolkit.errors import MlopsError, one_line
from mlops_toolkit.ops.doctor import swarm_role

log = logging.getLogger("autoserve.swarm")

SECOND_NS = 1_000_000_000
CRASH_LOOP_TASKS = 3  # failed tasks, none running: a version that cannot start, not a slow one
NAME_MAX = 63  # a service name is a DNS label
HEALTH_TEST = ["CMD", "python", "-c", "import urllib.request; "
               f"urllib.request.urlopen('http://127.0.0.1:{CONTAINER_PORT}/ping', timeout=2)"]


def size_bytes(size: str) -> int:
    """``512m``, ``2g``, ``1024k`` or plain bytes (Docker's memory notation)."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = size.strip().lower().removesuffix("b")
    return int(float(text[:-1]) * units[text[-1]]) if text and text[-1] in units else int(text)


def service_name(instance: str, key: DeploymentKey) -> str:
    """``mlops-<instance>-<model>-<hash>-v<version>``, cut to a DNS label (the hash keeps two
    models whose names differ only past the cut apart)."""
    digest = hashlib.sha1(f"{instance}/{key.model}".encode()).hexdigest()[:8]
    tail = f"-{digest}-v{key.version}"
    prefix = instance if instance.startswith("mlops") else f"mlops-{instance}"
    head = re.sub(r"[^A-Za-z0-9-]+", "-", f"{prefix}-{key.model}").strip("-")
    return head[:NAME_MAX - len(tail)].rstrip("-") + tail


class SwarmRuntime:
    # One deployment per version; the reconciler hands the replica counts to want().
    manages_replicas = True

    def __init__(self, settings: AutoserveSettings) -> None:
        import docker

        self.settings = settings
        self.errors = docker.errors
        self.types = docker.types
        self.client = docker.from_env(timeout=30)
        info = self.client.info()
        role = swarm_role(info)
        if not (info.get("Swarm") or {}).get("ControlAvailable"):
            raise MlopsError(f"--runtime swarm needs this Docker engine to be a swarm manager; {role}")
        self.node_id = info["Swarm"]["NodeID"]
        self.instance = instance_id(settings)
        self._lock = threading.Lock()
        self._counts: dict[DeploymentKey, int] = {}
        self._floors: dict[str, int] = {}
        self._addresses: dict[str, str] = {}  # node id -> address its published ports answer on
        self._bad_labels: set[str] = set()  # services already warned about
        # Ready once with their floor of tasks (or found running at start: adopted); from then
        # on one answering task keeps them ready while Swarm replaces the others.
        self._listed: list = self._services()  # as the last list() read them
        self._established: set[str] = {s.id for s in self._listed}

    @property
    def published(self) -> bool:
        """Tasks publish their port on their node unless the gateway shares their network."""
        docker = self.settings.docker
        return docker.publish or docker.network in ("", "host")

    # -- replica counts (the reconciler, every cycle) -------------------------------------
    def want(self, counts: dict[DeploymentKey, int], floors: dict[str, int]) -> None:
        """The tasks each version should run: a service started from now on gets its count,
        a running one is scaled to it. ``floors`` (per model) is what readiness counts
        against: tasks a scale-up adds never make a version unready. The services are the ones
        this cycle's :meth:`list` read (the reconciler observes first): no second query."""
        with self._lock:
            self._counts, self._floors = dict(counts), dict(floors)
        for service in self._listed:
            wanted = counts.get(_key(service))
            replicated = service.attrs["Spec"].get("Mode", {}).get("Replicated", {})
            if wanted is not None and replicated.get("Replicas") != wanted:
                try:
                    service.scale(wanted)
                except self.errors.APIError as exc:  # e.g. updated meanwhile: the next cycle tries again
                    log.warning("could not scale the service", extra={"service": service.name, "replicas": wanted,
                                                                       "error": one_line(exc)})

    # -- Runtime -------------------------------------------------------------------------
    def list(self) -> list[Deployment]:
        services = self._listed = self._services()
        if not services:
            return []
        tasks = self.client.api.tasks(filters={"service": [s.id for s in services], "desired-state": "running"})
        by_service: dict[str, list[dict]] = {}
        for task in tasks:
            by_service.setdefault(task["ServiceID"], []).append(task)
        return [self._deployment(s, by_service.get(s.id, [])) for s in services]

    def start(self, key: DeploymentKey, aliases: tuple[str, ...] = (), replica: int = 0,
              env: ServeEnv | None = None) -> Deployment:
        name = service_name(self.instance, key)
        remove_stale(self.client.services, name, self.instance, _labels)
        image = env.image if env is not None and env.image else self.settings.docker.image
        require_local_image(self.client, image)
        docker, t = self.settings.docker, self.types
        network = docker.network if docker.network not in ("", "host") else None
        ports = [{"Protocol": "tcp", "TargetPort": CONTAINER_PORT, "PublishMode": "host"}] if self.published else []
        labels = {LABEL: "true", f"{LABEL}.instance": self.instance, "mlops.model": key.model,
                  "mlops.version": str(key.version)}
        with self._lock:
            replicas = self._counts.get(key) or self._floors.get(key.model) or self.settings.replicas
        service = self.client.services.create(
            image, serve_command(key, "0.0.0.0", CONTAINER_PORT, self.settings.workers),  # noqa: S104 - the task's own network namespace
            name=name,
            labels={**labels, "mlops.aliases": ",".join(aliases), "mlops.started_at": f"{time.time():.3f}",
                    "mlops.env": env.key if env is not None else ""},
            container_labels=labels,
            env=[f"{k}={v}" for k, v in serving_environment(self.settings).items()],
            mode=t.ServiceMode("replicated", replicas=replicas),
            networks=[network] if network else [],
            endpoint_spec=t.EndpointSpec(mode="dnsrr", ports=ports),
            healthcheck=t.Healthcheck(test=HEALTH_TEST, interval=2 * SECOND_NS, timeout=3 * SECOND_NS, retries=3,
                                      start_period=int(self.settings.ready_timeout * SECOND_NS)),
            restart_policy=t.RestartPolicy(condition="any", delay=SECOND_NS, max_attempts=0),
            update_config=t.UpdateConfig(parallelism=1, order="start-first", failure_action="rollback",
                                         monitor=10 * SECOND_NS),
            rollback_config=t.RollbackConfig(parallelism=1, order="start-first"),
            resources=t.Resources(cpu_limit=int(docker.cpus * 1e9), mem_limit=size_bytes(docker.memory),
                                  cpu_reservation=int(docker.reserve_cpus * 1e9),
                                  mem_reservation=size_bytes(docker.reserve_memory)),
            constraints=list(docker.constraints),
            log_driver="json-file", log_driver_options=LOG_OPTIONS,
            init=True,
            stop_grace_period=10 * SECOND_NS,
        )
        service.reload()
        return self._deployment(service, [])

    def health(self, deployment: Deployment) -> Health:
        """READY when enough tasks run and answer /ping (the model's floor until the service
        was ready once, then one); DEAD when the service is gone or none of its tasks can
        start (Swarm would retry a crash loop forever: it is counted, not waited for)."""
        try:
            tasks = self.client.api.tasks(filters={"service": deployment.ident})
            if not tasks:
                self.client.services.get(deployment.ident)  # NotFound: gone
        except self.errors.NotFound:
            return Health.DEAD
        except (self.errors.APIError, self.errors.DockerException, OSError):
            return Health.UNKNOWN
        running = [t for t in tasks if t.get("DesiredState") == "running" and t["Status"]["State"] == "running"]
        failed = [t for t in tasks if t["Status"]["State"] in ("failed", "rejected")]
        if not running and len(failed) >= CRASH_LOOP_TASKS:
            return Health.DEAD
        answering = [e for e in filter(None, map(self._endpoint, running)) if ping(e.url)]
        if deployment.ident in self._established:
            return Health.READY if answering else Health.STARTING
        if len(answering) >= self._needed(deployment.key.model):
            self._established.add(deployment.ident)
            return Health.READY
        return Health.STARTING

    def stop(self, deployment: Deployment) -> None:
        """Remove the service: Swarm stops its tasks (SIGTERM, then 10 s to finish)."""
        self._established.discard(deployment.ident)
        try:
            self.client.services.get(deployment.ident).remove()
        except self.errors.NotFound:
            pass

    def output(self, deployment: Deployment, lines: int = 50) -> list[str]:
        """The service's last log lines, from every task (the deploy error quotes them)."""
        try:
            raw = self.client.api.service_logs(deployment.ident, stdout=True, stderr=True, tail=lines)
            text = b"".join(raw if not isinstance(raw, bytes) else [raw]).decode(errors="replace")
        except (self.errors.APIError, self.errors.DockerException, OSError):
            return []
        return text.splitlines()

    # -- helpers -------------------------------------------------------------------------
    def _services(self) -> list:
        """Ours, by label; one whose other labels cannot be read is skipped (with one warning)."""
        found = self.client.services.list(filters={"label": [f"{LABEL}=true", f"{LABEL}.instance={self.instance}"]})
        return [service for service, _ in usable(found, _labels, self._bad_labels, "service")]

    def _needed(self, model: str) -> int:
        floor = max(1, self._floors.get(model, self.settings.replicas))
        return floor if self.settings.min_ready is None else max(1, min(self.settings.min_ready, floor))

    def _deployment(self, service, tasks: list[dict]) -> Deployment:
        labels = _labels(service)
        running = [t for t in tasks if t["Status"]["State"] == "running"]
        endpoints = tuple(sorted(filter(None, map(self._endpoint, running)), key=lambda e: e.index))
        return Deployment(
            key=_key(service),
            url=endpoints[0].url if endpoints else "",
            ident=service.id,
            started_at=float(labels.get("mlops.started_at") or 0),
            aliases=tuple(a for a in labels.get("mlops.aliases", "").split(",") if a),
            name=service.attrs["Spec"]["Name"],
            env=labels.get("mlops.env") or None,
            endpoints=endpoints,
        )

    def _endpoint(self, task: dict) -> Endpoint | None:
        """Where the gateway reaches one running task (None: not known yet)."""
        index = int(task.get("Slot") or 1) - 1
        if self.published:
            ports = (task["Status"].get("PortStatus") or {}).get("Ports") or []
            port = next((p.get("PublishedPort") for p in ports if p.get("TargetPort") == CONTAINER_PORT), None)
            address = self._address(task.get("NodeID", ""))
            return Endpoint(f"http://{address}:{port}", task["ID"], index) if port and address else None
        for attachment in task.get("NetworksAttachments") or []:
            if attachment["Network"]["Spec"]["Name"] == self.settings.docker.network and attachment.get("Addresses"):
                address = attachment["Addresses"][0].split("/")[0]
                return Endpoint(f"http://{address}:{CONTAINER_PORT}", task["ID"], index)
        return None

    def _address(self, node_id: str) -> str | None:
        """127.0.0.1 for the watcher's own node, else the address the node joined with."""
        if node_id == self.node_id:
            return "127.0.0.1"
        if node_id not in self._addresses:
            try:
                self._addresses[node_id] = self.client.nodes.get(node_id).attrs["Status"]["Addr"]
            except (self.errors.APIError, KeyError):
                return None
        return self._addresses[node_id]


def _labels(service) -> dict[str, str]:
    return service.attrs["Spec"].get("Labels") or {}


def _key(service) -> DeploymentKey:
    return read_labels(_labels(service)).key
