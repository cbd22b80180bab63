"""Process-wide settings: where the tracking server is, which experiment and model to use.

``configure()`` is optional: every function reads the environment on first use
(``MLFLOW_TRACKING_URI``, ``MLOPS_EXPERIMENT``, ``MLOPS_MODEL_NAME``), and explicit
arguments win over the environment.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mlops_toolkit.connection import make_client, translated_errors
from mlops_toolkit.errors import ValidationError

if TYPE_CHECKING:
    from mlflow import MlflowClient

DEFAULT_TRACKING_URI = "http://127.0.0.1:5000"


@dataclass(frozen=True)
class Settings:
    tracking_uri: str
    experiment: str | None = None
    model_name: str | None = None


_settings: Settings | None = None


def configure(
    tracking_uri: str | None = None,
    experiment: str | None = None,
    model_name: str | None = None,
) -> Settings:
    """Set where runs and models go; unset values come from the environment."""
    import mlflow

    global _settings
    _settings = Settings(
        tracking_uri=tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI,
        experiment=experiment or os.environ.get("MLOPS_EXPERIMENT") or None,
        model_name=model_name or os.environ.get("MLOPS_MODEL_NAME") or None,
    )
    mlflow.set_tracking_uri(_settings.tracking_uri)
    mlflow.set_registry_uri(_settings.tracking_uri)
    return _settings


def settings() -> Settings:
    """The current settings, configuring from the environment on first use."""
    return _settings or configure()


def update(**changes: str | None) -> Settings:
    """Change some settings and keep the rest (used by the CLI's global options)."""
    current = settings()
    return configure(**{**current.__dict__, **{k: v for k, v in changes.items() if v}})


def resolve_model_name(model: str | None) -> str:
    """The model to act on: the argument, else MLOPS_MODEL_NAME, else a clear error."""
    name = model if model is not None else settings().model_name
    if name is None:
        raise ValidationError("no model given: pass a model name or set MLOPS_MODEL_NAME")
    return require_name(name, "model name")


def require_name(value: str | None, what: str) -> str:
    """Reject empty or blank names before they reach the server."""
    if value is None or not str(value).strip():
        raise ValidationError(f"{what} must not be empty")
    return str(value).strip()


@contextlib.contextmanager
def registry() -> Iterator[MlflowClient]:
    """A checked client for the configured server, with MLflow errors translated."""
    uri = settings().tracking_uri
    with translated_errors(uri):
        yield make_client(uri)


__all__ = ["Settings", "configure", "settings", "update", "registry", "resolve_model_name"]
