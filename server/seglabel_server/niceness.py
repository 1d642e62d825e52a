"""Batch work at a lower OS priority than clicks: Linux keeps a scheduling priority (nice value) per
thread, and a thread starts with its creator's. The threads that run batch work, and the ONNX
Runtime thread pools they use (made when a session opens), are lowered; the interactive lane's
thread and sessions keep the server's own, so when both want the cores the kernel gives them to the
click (measured on 2 cores, full-size decoder + CLIP click beside an encoder loop: 121 ms at equal
priority, 63 ms with the encoder's threads at nice 10; 50 ms idle)."""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")
BATCH_NICE = 10  # what batch work's threads add to their nice value beside an interactive lane


def lower_this_thread(nice: int) -> bool:
    """Raise the calling thread's nice value by ``nice`` (Linux; elsewhere, or refused: False)."""
    if nice <= 0 or sys.platform != "linux":
        return False
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
        return True
    except OSError as exc:  # never fatal: the work runs at the server's priority
        log.warning("cannot lower the priority of batch work: %s", exc)
        return False


def in_lowered_thread(fn: Callable[[], T], nice: int) -> T:
    """``fn()`` run in a new thread whose nice value is raised by ``nice``: the threads it creates
    (an ONNX Runtime session's intra-op pool) keep that priority. Its exception is raised here."""
    if nice <= 0:
        return fn()
    out: dict = {}

    def run() -> None:
        lower_this_thread(nice)
        try:
            out["value"] = fn()
        except BaseException as exc:  # re-raised in the caller
            out["error"] = exc

    t = threading.Thread(target=run, name="seglabel-open-lowered")
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]
