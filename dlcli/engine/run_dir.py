"""Who owns a run directory, and what a resume may write before it has really started.

One process writes a run at a time: it holds an exclusive lock on RUN/.lock (fcntl.flock) for as long as it lives.
A second writer (a resume of a live run, a second `dl train hydra.run.dir=` into it) is refused in one line naming
the holder. The kernel drops the lock when its process dies however it dies, so a killed run's dir is taken over
by the next resume without anything to clean up.

A resume stages what Hydra writes for the new job (.hydra/*.yaml, the log) in RUN/.hydra.resume/ and moves it in
only once training has restarted (`promote_staged`): a refused or failed resume leaves the run as it was.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import time
from pathlib import Path

from dlcli.base.errors import UserError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs are not guarded there
    fcntl = None  # type: ignore[assignment]

LOCK = ".lock"
STAGE = ".hydra.resume"
# Set by a launcher (trainer.devices=N) for the processes it starts in the run dir it holds: they write it for it.
HELD_BY_PARENT = "DL_RUN_DIR_HELD"
_held: dict[Path, int] = {}  # run dirs this process holds -> the lock file's descriptor


def acquire(run_dir: Path) -> None:
    """Take RUN/.lock for this process (again: a no-op), or raise UserError naming who holds it."""
    key = run_dir.resolve()
    if fcntl is None or key in _held or os.environ.get(HELD_BY_PARENT) == str(key):
        return
    try:
        fd = os.open(key / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UserError(f"cannot write the run directory {run_dir}: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = _read(fd)
        os.close(fd)
        raise UserError(f"{run_dir} is being written by another dl right now ({holder or 'a live process'}); "
                        "wait for it to end, or stop it first (nothing was changed)") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {platform.node()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
    _held[key] = fd


def release(run_dir: Path) -> None:
    fd = _held.pop(run_dir.resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor drops the lock


def holder(run_dir: Path) -> str | None:
    """Who writes this run now ("pid N on HOST since ..."), or None when nobody does (or it has no lock file)."""
    key = run_dir.resolve()
    if fcntl is None or not (key / LOCK).is_file() or os.environ.get(HELD_BY_PARENT) == str(key):
        return None  # (the last: our launcher holds it for us)
    if key in _held:
        return f"pid {os.getpid()} on {platform.node()} (this process)"
    try:
        fd = os.open(key / LOCK, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None  # nobody holds it: a finished or killed run's file
    except OSError:
        return _read(fd) or "a live process"
    finally:
        os.close(fd)


def _read(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 200).decode(errors="replace").strip()
    except OSError:
        return ""


# ------------------------------------------------------------------------------------------- a resume's staging
def stage(run_dir: Path) -> Path:
    """Make RUN/.hydra.resume/ (empty) for a resume's Hydra files and log; returns it."""
    staged = run_dir / STAGE
    shutil.rmtree(staged, ignore_errors=True)  # a resume killed before it started left it: not the run's
    staged.mkdir()
    return staged


def promote_staged(run_dir: Path) -> None:
    """The resumed run trains: its Hydra record replaces the run's, its log lines join train.log."""
    staged = run_dir / STAGE
    if not staged.is_dir():
        return
    (run_dir / ".hydra").mkdir(exist_ok=True)
    for f in staged.glob("*.yaml"):
        os.replace(f, run_dir / ".hydra" / f.name)
    log = staged / "train.log"
    if log.exists():
        _repoint_log(log, run_dir / "train.log")
        with open(run_dir / "train.log", "a") as out:
            out.write(log.read_text())
        log.unlink()
    shutil.rmtree(staged, ignore_errors=True)


def discard_staged(run_dir: Path) -> None:
    """A refused or failed resume: drop what it staged; the run's own files were never touched."""
    staged = run_dir / STAGE
    if staged.is_dir():
        _repoint_log(staged / "train.log", None)
        shutil.rmtree(staged, ignore_errors=True)


def _repoint_log(old: Path, new: Path | None) -> None:
    """Hydra's file handler writes `old`: close it and, if `new`, write there from now on (or stop logging to it)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename) == old.resolve():
            handler.close()
            if new is None:
                logging.getLogger().removeHandler(handler)
            else:
                handler.baseFilename = str(new.resolve())
