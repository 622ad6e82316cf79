"""Test-only fault injection, installed from outside dl (sitecustomize.py in dl's subprocesses, conftest in-process).

- DL_TEST_SIGNAL_AT_STEP=N[:TERM|:KILL][,M...]: after optimizer step N the process signals itself (deterministic
  interrupts: tests/test_resume.py), through the loop's public STEP_END_HOOKS.
- DL_TEST_PAUSE_IN_SAVE=MARKER[@k]: the k-th checkpoint save of the process writes half of the file, creates MARKER
  and sleeps (the test SIGKILLs it there); DL_TEST_ENOSPC_AT_SAVE=k: the k-th save fails as a full disk would.
"""

from __future__ import annotations

import errno
import io
import os
import signal
import time
from pathlib import Path
from typing import Any

SIGNAL_AT, PAUSE, ENOSPC = "DL_TEST_SIGNAL_AT_STEP", "DL_TEST_PAUSE_IN_SAVE", "DL_TEST_ENOSPC_AT_SAVE"
_installed = False
_saves = 0


def install() -> None:
    """Idempotent; each hook reads its variable when it fires, so installing it in a test process is harmless."""
    global _installed
    if _installed:
        return
    _installed = True
    import torch

    from dlcli.engine import loop

    loop.STEP_END_HOOKS.append(_signal_at_step)
    real_save = torch.save

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        if PAUSE not in os.environ and ENOSPC not in os.environ:
            return real_save(obj, f, *args, **kwargs)
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        _faulty_write(buf.getvalue(), f)

    torch.save = save


def _signal_at_step(state: Any) -> None:
    for item in filter(None, os.environ.get(SIGNAL_AT, "").split(",")):
        step, _, name = item.partition(":")
        if int(step) == state.step:
            os.kill(os.getpid(), int(getattr(signal, f"SIG{name or 'INT'}")))


def _faulty_write(data: bytes, f: Any) -> None:
    global _saves
    _saves += 1
    marker, _, at = os.environ.get(PAUSE, "").partition("@")
    pause = bool(marker) and _saves == int(at or 1)
    full = os.environ.get(ENOSPC, "") == str(_saves)
    f.write(data[: len(data) // 2])
    f.flush()
    if full:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), getattr(f, "name", "checkpoint"))
    if pause:
        Path(marker).write_text(str(getattr(f, "name", "")))
        time.sleep(600)
    f.write(data[len(data) // 2:])
