"""The project's error types, with one message format for a bad value: ``bad value NAME=VALUE: WHAT IS ALLOWED``.

Each value is checked once, by the object that uses it (docs/design.md): a constructor raises
:class:`ArgumentError` naming its argument; the training builder, which hands config values to constructors,
re-labels it with the config key (:class:`ConfigError`, ``bad config value reweight.gamma=-1: ...``).
:class:`ExpectedFailure` marks the errors a command reports by their message alone (bad config, missing data,
refused resume, busy run directory, ...): no traceback unless ``HYDRA_FULL_ERROR=1``. Plain Python.
"""
from __future__ import annotations

from typing import Any


class ExpectedFailure(Exception):
    """An error raised on purpose, whose message says what to do: the commands print it alone and exit non-zero."""


class ArgumentError(ExpectedFailure, ValueError):
    """A value outside what its argument allows."""

    prefix = "bad value"

    def __init__(self, name: str, value: Any, allowed: str):
        super().__init__(f"{self.prefix} {name}={value!r}: {allowed}")
        self.name, self.value, self.allowed = name, value, allowed

    def as_config_error(self, key_prefix: str, names: dict | None = None) -> "ConfigError":
        """This error named by its config key: ``key_prefix`` + the argument's name (or ``names[name]``)."""
        name = (names or {}).get(self.name, self.name)
        return ConfigError(f"{key_prefix}.{name}" if key_prefix else name, self.value, self.allowed)


class ConfigError(ArgumentError):
    """A config value outside what its key allows; the message names the key, the value and what is allowed."""

    prefix = "bad config value"

    @property
    def key(self) -> str:
        return self.name


def report_expected_failure(error: ExpectedFailure, log, exit_code: int = 2) -> None:
    """End a command on an expected failure: ``error: MESSAGE`` on stderr (and in the run's log file, if any),
    exit ``exit_code``. ``HYDRA_FULL_ERROR=1`` re-raises it instead, for the whole traceback."""
    import logging
    import os
    import sys

    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise error
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s", (error,), None)
    for handler in logging.getLogger().handlers:  # the log file says why the run ended; the terminal gets stderr
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
    print(f"error: {error}", file=sys.stderr)
    sys.exit(exit_code)
