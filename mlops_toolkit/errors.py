"""Errors the toolkit raises.

Every failure a user can cause or meet is one of these, with a message that reads well
on one line: the CLI prints it as is and notebooks show it without an MLflow stack.
"""

from __future__ import annotations


class MlopsError(Exception):
    """Base class: something the user should read, not a bug."""

    exit_code = 1


class ValidationError(MlopsError, ValueError):
    """Bad input: empty names, reserved aliases, a metric no run has..."""

    exit_code = 2


class NotFoundError(MlopsError, LookupError):
    """Unknown model, version or alias."""

    exit_code = 2


class TrackingUnavailableError(MlopsError, ConnectionError):
    """The tracking server cannot be reached or is not an MLflow server."""

    exit_code = 1

    def __init__(self, message: str, answered: bool = False) -> None:
        super().__init__(message)
        self.answered = answered  # something answered, but not like MLflow: a wrong URI, not an outage


def one_line(error: BaseException | str, limit: int = 300) -> str:
    """The first line of an error, bounded: what logs, tables and tags show."""
    text = str(error).strip()
    line = text.splitlines()[0] if text else (type(error).__name__ if isinstance(error, BaseException) else "")
    return line if len(line) <= limit else line[: limit - 3] + "..."
