"""Signals as schedulers and terminals send them, handled once for the CLI and every worker pool.

SIGTERM (a scheduler's preemption, `kill`, the end of a job's time) is handled like Ctrl-C: it raises
``Terminated``, a KeyboardInterrupt, so every place that saves a run's status on Ctrl-C does so on
SIGTERM too, and the CLI exits 128 + the signal's number (130 for SIGINT, 143 for SIGTERM). Pool
workers start with SIGINT ignored (a terminal's Ctrl-C goes to the whole process group; the parent
alone handles it and stops the workers) and die with their parent, even when it is SIGKILLed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time

EXIT_TERM = 128 + signal.SIGTERM


class Terminated(KeyboardInterrupt):
    """A SIGTERM, raised where a Ctrl-C would be."""

    signum = signal.SIGTERM


def exit_code(e: KeyboardInterrupt) -> int:
    """What a shell reports for a process ended by that signal: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + int(getattr(e, "signum", signal.SIGINT))


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def raise_on_sigterm() -> None:
    """SIGTERM raises Terminated in this process's main thread (the CLI's commands)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


@contextlib.contextmanager
def spawning_workers():
    """SIGINT ignored while worker processes are spawned inside: they inherit the disposition from
    their first instruction, so a Ctrl-C while they import torch prints no traceback in them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, saved)


def term_with_parent() -> None:
    """SIGTERM to this process when its parent dies (Linux's PR_SET_PDEATHSIG; elsewhere nothing).
    It survives exec, so a subprocess's preexec_fn may call it too."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def die_with_parent(parent: int, on_orphan=None) -> None:
    """In a pool worker: SIGINT ignored, and SIGTERM when the parent ``parent`` dies (Linux's
    PR_SET_PDEATHSIG, plus a thread that watches the parent's pid, for other systems and for a
    parent that died before this ran). ``on_orphan()`` runs instead of the SIGTERM when given."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    term_with_parent()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        if on_orphan is not None:
            on_orphan()
        else:
            os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="vaebench-parent-watch", daemon=True).start()


def stop_pool(pool) -> None:
    """Cancel a ProcessPoolExecutor's queued tasks and SIGTERM its workers; returns at once."""
    procs = dict(getattr(pool, "_processes", None) or {})
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs.values():
        with contextlib.suppress(OSError, ValueError, AttributeError):
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGTERM)
