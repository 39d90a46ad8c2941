"""How a study is stopped from outside: Ctrl-C or SIGTERM (a scheduler, `timeout`) ends it with its runs KILLED.

The handler raises `StudyStopped` in the driver's main thread and records it, since an
exception raised inside Ray's or a library's C code may be turned into a plain
KeyboardInterrupt or lost; the runners' waiting loops call `check_stopped` each turn.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Any


class StudyStopped(KeyboardInterrupt):
    """A study stopped from outside (Ctrl-C, or SIGTERM from a scheduler or `timeout`): its runs are KILLED."""

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # 130 for Ctrl-C, 143 for SIGTERM, as shells report them


STOPS: list[StudyStopped] = []  # the stop a signal asked for, kept in case code it interrupted swallowed the raise


def raise_stopped(signum: int, frame: Any) -> None:
    stop = StudyStopped(signal.Signals(signum).name, 128 + signum)
    STOPS.append(stop)
    raise stop


def request_stop(stop: StudyStopped) -> None:
    """Stop the study from another thread (the autoscaler watch): recorded for `check_stopped`, and raised in the
    main thread at once as Ctrl-C is, where that raise gets through."""
    import _thread

    STOPS.append(stop)
    _thread.interrupt_main()


def check_stopped() -> None:
    """Raise the stop a signal asked for, if the raise in its handler did not get through.

    A handler's exception can be lost where it lands in code that swallows it (a callback
    inside Ray's or a library's C code); the runners' waiting loops call this each turn so
    that a SIGTERM always stops the study.
    """
    if STOPS:
        raise STOPS[-1]


@contextlib.contextmanager
def signals_kept(*signums: int):
    """Put these signals' handlers back after the block, as they were before it.

    Ray Tune's `Tuner.fit` installs its own SIGINT and SIGUSR1 handlers in the main thread
    and leaves them there: afterwards Ctrl-C (and `request_stop`) only sets a finished Tune
    run's event instead of raising, and SIGUSR1 no longer dumps the stacks. A handler
    registered with `faulthandler` (SIGUSR1, by the CLI) is registered again.
    """
    import faulthandler

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in signums}
    try:
        yield
    finally:
        for s, handler in previous.items():
            if handler is not None and signal.getsignal(s) is not handler:
                signal.signal(s, handler)
            if faulthandler.unregister(s):  # faulthandler's own table says it was registered: put it back in front
                faulthandler.register(s, all_threads=True)


def _unraisable(unraisable: Any) -> None:
    """A stop raised inside a destructor or weakref callback (where a signal can land: SQLAlchemy's registry, a
    tensor's finalizer) is "ignored" by Python with a printed traceback; it is recorded in STOPS, and the next
    `check_stopped` raises it, so nothing is printed for it. Anything else goes to Python's own hook."""
    if isinstance(unraisable.exc_value, StudyStopped):
        return
    sys.__unraisablehook__(unraisable)


@contextlib.contextmanager
def on_sigterm(action: Any):
    """SIGTERM's handler for the block: `raise_stopped` while the study runs (as Ctrl-C raises
    KeyboardInterrupt), SIG_IGN while a stopped study writes its last table and ends its runs.

    Set after Ray starts: Ray's own fatal-signal handler would otherwise print a native stack
    dump and kill the driver before any run could be marked. Signals reach the main thread only.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous, hook = signal.signal(signal.SIGTERM, action), sys.unraisablehook
    sys.unraisablehook = _unraisable
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        sys.unraisablehook = hook
