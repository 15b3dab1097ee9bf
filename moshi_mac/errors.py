"""User-facing errors: one line that names the problem and a fix, and an exit code.

Anything raised as a `MoshiMacError` is printed by the CLI as a single line without a
traceback. Exit codes: 2 for a model/config/weights mismatch, 1 for other user mistakes.
"""

from __future__ import annotations


class MoshiMacError(Exception):
    """An error caused by user input (a file, a flag, a missing download)."""

    exit_code = 1


class ConfigError(MoshiMacError):
    """A config file is malformed or inconsistent."""

    exit_code = 2


class WeightsMismatchError(MoshiMacError):
    """The weights on disk do not match the config (or tokenizer / Mimi)."""

    exit_code = 2


class ModelNotFoundError(MoshiMacError):
    """A model's files are neither on disk nor downloadable."""

    exit_code = 1
