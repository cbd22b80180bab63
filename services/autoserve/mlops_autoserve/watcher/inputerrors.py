"""Per-model input errors made visible: one log line per distinct bad value, and
``autoserve_model_errors{model,reason}`` while it lasts.

The reason label is the input's kind (rollout, shadow, replicas, min_replicas,
max_replicas, model): a short fixed word, so a flood of distinct garbage values never
grows the series; the value itself is only in the log line and on the route.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping

from mlops_autoserve.metrics import AutoserveMetrics
from mlops_autoserve.watcher.modelinputs import InputError

log = logging.getLogger("autoserve.desired")


class InputErrorReport:
    name = "input errors"

    def __init__(self, metrics: AutoserveMetrics) -> None:
        self.metrics = metrics
        self._logged: set[tuple[str, str, str]] = set()  # (model, tag, digest) of the errors standing now

    def reconcile(self, snap) -> None:
        self.publish(snap.desired.errors)

    def publish(self, errors: Mapping[str, tuple[InputError, ...]]) -> None:
        standing = {(model, e.tag, e.digest) for model, found in errors.items() for e in found}
        for model, found in errors.items():
            for error in found:
                if (model, error.tag, error.digest) not in self._logged:
                    log.warning(f"ignoring a bad input of model {model!r}: {error}",
                                extra={"model": model, "alias": error.alias, "tag": error.tag, "reason": error.kind})
        bad_tags = {(model, tag) for model, tag, _ in standing}
        for model, tag in {(m, t) for m, t, _ in self._logged} - bad_tags:
            log.info(f"model {model!r}: {tag or 'the model'} is readable again", extra={"model": model, "tag": tag})
        self._logged = standing  # bounded: only the errors that stand now are remembered
        counts = Counter((model, e.kind) for model, found in errors.items() for e in found)
        gauge = self.metrics.model_errors
        gauge.clear()
        for (model, kind), count in counts.items():
            gauge.labels(model, kind).set(count)
