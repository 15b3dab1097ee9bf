"""User-facing errors: one line that names the problem and a fix, and an exit code.

Anything raised as a `MoshiMacError` is printed by the CLI as a single line without a
traceback. The exit codes, one scheme for every command (README "When things go wrong"):

    0    done
    1    a run-time failure: non-finite numbers, a full disk, a batch with a failed
         input, a model that is not on disk and cannot be downloaded, an audio device
         that fails, outputs another run is writing
    2    the command cannot run as given: a bad flag value, a bad path, an existing
         output without --force, a config or weights file that is invalid or mismatched
    130  stopped by Ctrl-C (SIGINT)     143  by SIGTERM     129  by SIGHUP
         (128 + the signal number; partial outputs are kept, see outputs.py)
"""

from __future__ import annotations

import signal

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2


def signal_exit_code(signum: int) -> int:
    """128 + the signal number: 130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP."""
    return 128 + int(signum)


def signal_name(signum: int) -> str:
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


class MoshiMacError(Exception):
    """An error the user can fix; printed as one line. Default: a run-time failure.
    A subclass names its exit code in its header: `class X(MoshiMacError, exit_code=...)`."""

    exit_code = EXIT_RUNTIME

    def __init_subclass__(cls, exit_code: int | None = None, **kwargs):
        super().__init_subclass__(**kwargs)
        if exit_code is not None:
            cls.exit_code = exit_code


class UsageError(MoshiMacError, exit_code=EXIT_USAGE):
    """A flag value, a path or an argument that cannot work as given."""


class ConfigError(MoshiMacError, exit_code=EXIT_USAGE):
    """A config file is malformed or inconsistent."""


class WeightsMismatchError(MoshiMacError, exit_code=EXIT_USAGE):
    """The weights on disk do not match the config (or tokenizer / Mimi), or are corrupt."""


class ModelNotFoundError(MoshiMacError, exit_code=EXIT_RUNTIME):
    """A model's files are neither on disk nor downloadable."""


class NonFiniteError(MoshiMacError, exit_code=EXIT_RUNTIME):
    """The model produced NaN or Inf (its weights are corrupt or it overflowed)."""


class OutputBusyError(MoshiMacError, exit_code=EXIT_RUNTIME):
    """Another run is writing the same outputs."""


class Interrupted(KeyboardInterrupt):
    """Raised on the main thread by the first SIGINT / SIGTERM / SIGHUP outside a phase
    that stops by itself (see signals.py); carries the signal for the exit code."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signum)
        self.signum = signum
