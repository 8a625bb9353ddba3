"""Progress reports from inside the compiled loop to a host callback.

A ``generate(progress=f)`` call registers ``f`` under a fresh id and passes the id into the loop as
a traced knob, so every call with progress shares one compile and concurrent calls (threads) each
reach their own callback.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import threading

import jax
import jax.numpy as jnp

_listeners: dict = {}
_ids = itertools.count(1)
_lock = threading.Lock()


def _takes_three(f) -> bool:
    """Whether ``f`` accepts (done, iteration, row_iterations)."""
    try:
        inspect.signature(f).bind(0, 0, 0)
        return True
    except TypeError:
        return False
    except ValueError:  # no signature (some builtins): the documented two arguments
        return False


@contextlib.contextmanager
def listening(callback):
    """Register ``callback(done, iteration[, row_iterations])``; yields its id (an int32 knob)."""
    f = callback if _takes_three(callback) else (lambda done, it, _rows: callback(done, it))
    with _lock:
        pid = next(_ids) % (1 << 31)
        _listeners[pid] = f
    try:
        yield pid
    finally:
        with _lock:
            _listeners.pop(pid, None)


def _report(pid, done, it, row_iters):
    f = _listeners.get(int(pid))
    if f is not None:
        f(int(done), int(it), int(row_iters))


def emit(knobs, done, it, row_iters) -> None:
    """From the traced loop: committed tokens in the batch, iteration, row iterations so far."""
    jax.debug.callback(_report, jnp.asarray(knobs.progress_id), done, it, row_iters)
