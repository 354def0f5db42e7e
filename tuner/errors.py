"""The library's own exceptions. The CLI turns each into one line and an exit code."""

from __future__ import annotations


class TunerError(Exception):
    """Base of every error the CLI reports as one line. ``exit_code`` follows the contract:
    2 bad input, 3 environment unfit for the request, 1 anything else."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class BadInput(TunerError):
    """Usage errors, unreadable or malformed models, invalid search spaces or configs."""

    exit_code = 2


class BadModel(BadInput):
    """The model file cannot be used: missing, unreadable, not GGUF, truncated, insane header."""


class EnvironmentUnfit(TunerError):
    """The machine or build cannot do what was asked (for example CUDA asked, CPU build found)."""

    exit_code = 3

