"""How a study is stopped from outside: Ctrl-C or SIGTERM (a scheduler, `timeout`) ends it with its runs KILLED.

While a study runs, both signals have the study's own handler (`on_stop_signals`): it raises
`StudyStopped` in the driver's main thread and records it, since an exception raised inside
Ray's or a library's C code may be turned into a plain KeyboardInterrupt or lost; the runners'
waiting loops call `check_stopped` each turn. Ctrl-C is recorded too (Python's own handler
only raises): a Ctrl-C lost in Ray's C code would otherwise leave the study running.
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


_REQUESTED: list[StudyStopped] = []  # a stop `request_stop` asked for, raised by the SIGINT handler it triggers


def signal_stop(signum: int) -> StudyStopped:
    """The stop a signal asks for: Ctrl-C's is "interrupted" (exit code 130), SIGTERM's "SIGTERM" (143)."""
    return StudyStopped("interrupted" if signum == signal.SIGINT else signal.Signals(signum).name, 128 + signum)


def raise_stopped(signum: int, frame: Any) -> None:
    """The handler of SIGTERM and SIGINT while a study runs: record the stop, and raise it."""
    stop = _REQUESTED.pop() if signum == signal.SIGINT and _REQUESTED else signal_stop(signum)
    STOPS.append(stop)
    raise stop


def request_stop(stop: StudyStopped) -> None:
    """Stop the study from another thread (the autoscaler watch): recorded for `check_stopped`, and raised in the
    main thread at once by the study's SIGINT handler, where that raise gets through."""
    import _thread

    STOPS.append(stop)
    _REQUESTED.append(stop)
    _thread.interrupt_main()  # SIGINT's handler runs in the main thread (nothing, were it SIG_IGN: hence STOPS)


def clear_stops() -> None:
    """Forget every stop recorded or requested: a new study starts unstopped."""
    STOPS.clear()
    _REQUESTED.clear()


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
def on_stop_signals(action: Any):
    """SIGTERM's and SIGINT's handler for the block: `raise_stopped` while the study runs, a handler that only
    records the stop while a stopped study writes its last table and ends its runs.

    Set after Ray starts: Ray's own fatal-signal handler would otherwise print a native stack
    dump and kill the driver before any run could be marked. Signals reach the main thread only.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signums = (signal.SIGTERM, signal.SIGINT)
    previous, hook = {s: signal.signal(s, action) for s in signums}, sys.unraisablehook
    sys.unraisablehook = _unraisable
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        sys.unraisablehook = hook
