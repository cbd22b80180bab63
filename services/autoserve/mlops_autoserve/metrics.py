"""Prometheus metrics: the names are a contract with dashboards and alerts."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
SWITCH_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 15, 20, 30, 60, 120, 300)
ENV_BUILD_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200)
# The request buckets plus 2 s: a reconcile cycle over 2 s is a stall every model waits for.
RECONCILE_BUCKETS = tuple(sorted(LATENCY_BUCKETS + (2,)))


class AutoserveMetrics:
    """The watcher's metrics (control plane), on its own /metrics."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.endpoint_info = Gauge(
            "autoserve_endpoint_info", "One series per served (model, alias): version and state",
            ["model", "alias", "version", "state"], registry=r,
        )
        self.reconcile_total = Counter(
            "autoserve_reconcile", "Reconcile cycles by result", ["result"], registry=r
        )
        self.reconcile_duration = Histogram(
            "autoserve_reconcile_duration_seconds", "Time of one reconcile cycle", registry=r,
            buckets=RECONCILE_BUCKETS,
        )
        self.registry_requests = Counter(
            "autoserve_registry_requests", "HTTP requests the watcher sent to the model registry", registry=r
        )
        self.deploy_total = Counter(
            "autoserve_deploy", "Deployments started, by result", ["model", "alias", "result"], registry=r
        )
        self.scale_total = Counter(
            "autoserve_scale", "Autoscaling decisions, by direction (up, down)", ["model", "version", "direction"],
            registry=r,
        )
        self.replicas_wanted = Gauge(
            "autoserve_replicas_wanted", "Replicas the autoscaler wants for a served version", ["model", "version"],
            registry=r,
        )
        self.switch_duration = Histogram(
            "autoserve_switch_duration_seconds", "Alias seen moved until the new version serves",
            registry=r, buckets=SWITCH_BUCKETS,
        )
        self.rollout_total = Counter(
            "autoserve_rollout", "Rollouts ended, by result (passed, failed, aborted)", ["model", "result"], registry=r
        )
        self.rollout_percent = Gauge(
            "autoserve_rollout_percent", "Share of an alias's traffic sent to its rollout's candidate",
            ["model", "alias", "version"], registry=r,
        )
        self.gateway_restarts = Counter(
            "autoserve_gateway_restarts", "Times the watcher started its gateway again after it died", registry=r,
        )
        self.model_errors = Gauge(
            "autoserve_model_errors", "Inputs of a model the watcher ignores because they are bad (a tag that does not "
            "parse), by kind: rollout, shadow, replicas, min_replicas, max_replicas, model", ["model", "reason"],
            registry=r,
        )
        self.route_blocked = Gauge(
            "autoserve_route_blocked", "1 while prod holds an alias back from its wanted version (not approved, or "
            "blocked); the version is the wanted one", ["model", "alias", "version"], registry=r,
        )
        gate_labels = ["model", "alias", "version"]
        self.rollout_step_error_ratio = Gauge(
            "autoserve_rollout_step_error_ratio", "Share of 5xx answers of a rollout's candidate in its current "
            "(or last judged) step", gate_labels, registry=r,
        )
        self.rollout_step_p95 = Gauge(
            "autoserve_rollout_step_p95_seconds", "p95 latency of a rollout's candidate in its current (or last "
            "judged) step", gate_labels, registry=r,
        )
        self.rollout_step_agreement = Gauge(
            "autoserve_rollout_step_agreement_ratio", "Share of the candidate's labels equal to the current version's "
            "in the step (rollouts with --min-agreement)", gate_labels, registry=r,
        )
        self.env_build_seconds = Histogram(
            "autoserve_env_build_seconds", "Time to build a model's environment (uv), by result",
            ["result"], registry=r, buckets=ENV_BUILD_BUCKETS,
        )
        self.env_resolve_total = Counter(
            "autoserve_env_resolve", "Environment decisions of deploys: local (the serving environment "
            "satisfies the model), hit (built before), built, failed", ["outcome"], registry=r,
        )
        self.env_builds_in_progress = Gauge(
            "autoserve_env_builds_in_progress", "Environment builds running now", registry=r,
        )
        self.env_cache_bytes = Gauge(
            "autoserve_env_cache_bytes", "Disk used by built environments (as last listed)", registry=r,
        )
        self.env_removed_total = Counter(
            "autoserve_env_removed", "Built environments removed by the cache clean-up, by reason (idle, size)",
            ["reason"], registry=r,
        )
        self.last_reconcile = Gauge(
            "autoserve_last_reconcile_timestamp_seconds", "Unix time of the last completed reconcile",
            registry=r,
        )
        self.audit_events = Counter(
            "autoserve_audit_events", "Audit events of the background writer by result (sent: the store took it, "
            "spooled: kept on disk for a retry, dropped: lost, the spool full or unwritable)", ["result"], registry=r,
        )
        for result in ("sent", "spooled", "dropped"):
            self.audit_events.labels(result)
        self.audit_queued = Gauge(
            "autoserve_audit_queued", "Audit events waiting in memory for the background writer", registry=r,
        )
        self.audit_spooled = Gauge(
            "autoserve_audit_spooled", "Audit events waiting in the spool for the store to answer", registry=r,
        )


class GatewayMetrics:
    """The gateway's metrics (data plane), on its admin port's /metrics."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests_total = Counter(
            "autoserve_requests", "Gateway answers to /invocations, every status included",
            ["model", "alias", "version", "code"], registry=r,
        )
        self.request_duration = Histogram(
            "autoserve_request_duration_seconds", "Gateway request latency", ["model", "alias"],
            registry=r, buckets=LATENCY_BUCKETS,
        )
        self.ejections_total = Counter(
            "autoserve_replica_ejections", "Replicas taken out of rotation after consecutive failures", registry=r
        )
        self.shadow_requests = Counter(
            "autoserve_shadow_requests", "Shadow copies by result (ok, error, timeout, dropped, mismatch); "
            "alias and version are the shadow's", ["model", "alias", "version", "result"], registry=r,
        )
        self.shadow_compared = Counter(
            "autoserve_shadow_compared", "Prediction values compared between the caller's answer and the shadow's",
            ["model", "alias", "version"], registry=r,
        )
        self.shadow_agreement = Counter(
            "autoserve_shadow_agreement", "Compared values that were equal (classification)",
            ["model", "alias", "version"], registry=r,
        )
        self.shadow_abs_diff = Counter(
            "autoserve_shadow_abs_diff", "Sum of |caller's value - shadow's value| (regression)",
            ["model", "alias", "version"], registry=r,
        )
        self.shadow_latency = Histogram(
            "autoserve_shadow_latency_seconds", "Latency of shadow copies", ["model", "alias"],
            registry=r, buckets=LATENCY_BUCKETS,
        )
        self.payload_log_rows = Counter(
            "autoserve_payload_log_rows", "Sampled requests for the payload log, by result (written, dropped: "
            "the buffer was full in rows or bytes, failed: the app-db write failed, refused: the app-db refused the "
            "row's data, e.g. a NUL character, skipped: body too large)", ["result"], registry=r,
        )
        self.table_serial = Gauge(
            "autoserve_route_table_serial", "Serial of the route table the gateway serves", registry=r
        )
        self.limits_total = Counter(
            "autoserve_gateway_limits", "Requests and connections a gateway limit refused or cut, by limit: "
            "connections (over --max-connections), header_timeout, send_timeout (a caller that stopped reading its "
            "answer for 60 s), body_timeout (a stalled upload), body_budget "
            "(over --max-inflight-mb), body_size (413), response_size (over --max-response-mb), shadow_bytes, "
            "payload_log_bytes", ["limit"], registry=r,
        )
        self.connections = Gauge(
            "autoserve_gateway_connections", "Client connections open on the gateway port", registry=r
        )
        # Adaptive batching (routes with batching on); no labels: bounded whatever is served.
        self.batch_rows = Histogram("autoserve_batch_rows", "Rows per batch sent to a replica", registry=r,
                                    buckets=(2, 4, 8, 16, 32, 64, 128, 256, 512))
        self.batch_requests = Histogram("autoserve_batch_requests", "Callers' requests per batch sent", registry=r,
                                        buckets=(2, 4, 8, 16, 32, 64, 128, 256))
        self.batch_held = Histogram("autoserve_batch_held_seconds", "Longest time a request of a batch waited for it",
                                    registry=r, buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1))
        self.batches_resent = Counter(
            "autoserve_batches_resent", "Batches sent again request by request, by reason: error (the batch was "
            "refused), not_row_aligned (its answer was not one prediction per row: the version is not batched "
            "again)", ["reason"], registry=r)
        for reason in ("error", "not_row_aligned"):
            self.batches_resent.labels(reason)
        self.body_bytes_inflight = Gauge(
            "autoserve_gateway_body_bytes_inflight", "Bytes of request bodies held in memory now (all routes)",
            registry=r,
        )
