"""SIGINT, SIGTERM and SIGHUP: stop cleanly, keep what was made, exit 128 + the signal.

Python raises KeyboardInterrupt wherever the main thread happens to be, and by default
SIGTERM / SIGHUP kill the process outright. Both lose work, and a KeyboardInterrupt that
leaves the main thread while worker threads are inside native code (Mimi, MLX) lets the
interpreter tear those threads down at exit: glibc aborts ("FATAL: exception not
rethrown", exit 134). `SignalGuard` replaces that with:

- first signal, inside `guard.stopping(event)` (a session running, outputs being
  written): only set `event` and remember the signal; the code checks `guard.signum`
  when the phase ends, finalizes its outputs and returns `guard.exit_code`.
- first signal elsewhere (loading a model, converting): raise `Interrupted` on the main
  thread; no worker threads run then, so the ordinary unwinding is safe.
- a second signal: run the registered `on_second` callbacks (fast, safe finalization:
  e.g. closing a recording), print one line and leave at once with `os._exit` (no
  interpreter teardown, so no abort), with the first signal's exit code.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Callable

from .errors import Interrupted, signal_exit_code, signal_name

SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None))
                if s is not None)


class SignalGuard:
    def __init__(self):
        self.signum: int | None = None  # the first signal received
        self.count = 0
        self.on_second: list[Callable[[], None]] = []
        self.finished = False  # the final message is out: later signals are ignored
        self._events: list[threading.Event] = []
        self._saved: dict[int, object] = {}
        self._stderr: int | None = None

    # -- installation ------------------------------------------------------------------
    def install(self) -> "SignalGuard":
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers can only be set from the main thread
        for s in SIGNALS:
            self._saved[s] = signal.signal(s, self._handle)
        # The real stderr, kept for the last line: live sends fd 2 to a log meanwhile.
        self._stderr = os.dup(2)
        return self

    def restore(self) -> None:
        for s, handler in self._saved.items():
            signal.signal(s, handler)
        self._saved.clear()
        if self._stderr is not None:
            os.close(self._stderr)
            self._stderr = None

    # -- state -------------------------------------------------------------------------
    @property
    def exit_code(self) -> int:
        return signal_exit_code(self.signum) if self.signum is not None else 0

    @property
    def name(self) -> str:
        return signal_name(self.signum) if self.signum is not None else ""

    @contextlib.contextmanager
    def stopping(self, event: threading.Event):
        """A phase that stops by itself when `event` is set: signals only set it."""
        self._events.append(event)
        if self.signum is not None:
            event.set()
        try:
            yield event
        finally:
            self._events.remove(event)

    def check(self) -> None:
        """Raise `Interrupted` if a signal came (between phases, e.g. between files)."""
        if self.signum is not None:
            raise Interrupted(self.signum)

    # -- the handler -------------------------------------------------------------------
    def _handle(self, signum, frame) -> None:
        if self.finished:
            return
        self.count += 1
        if self.signum is None:
            self.signum = signum
        if self.count > 1:
            self._exit_now()
        if self._events:
            for e in self._events:
                e.set()
            return
        raise Interrupted(signum)

    def _exit_now(self) -> None:
        for fn in reversed(self.on_second):
            with contextlib.suppress(Exception):
                fn()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        with contextlib.suppress(Exception):
            os.write(2 if self._stderr is None else self._stderr, (f"error: {signal_name(self.signum)} twice: stopped at once; outputs "
                         f"not yet written are lost (partial files end in .partial)\n").encode())
        os._exit(self.exit_code)


# The process-wide guard, installed by the CLI for the duration of a command.
guard = SignalGuard()


@contextlib.contextmanager
def installed():
    """Install the process-wide guard (fresh state) for one command; restore after."""
    global guard
    guard = SignalGuard().install()
    try:
        yield guard
    finally:
        guard.restore()
        if guard.signum is not None:
            # Stopping because of a signal: the process is about to exit; a repeat must not
            # land a KeyboardInterrupt in the interpreter's shutdown.
            for s in SIGNALS:
                signal.signal(s, signal.SIG_IGN)


def current() -> SignalGuard:
    return guard
