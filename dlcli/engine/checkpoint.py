"""Checkpoints: one .pt that torch.load(weights_only=True) opens, written atomically.

Contents: {format, version, model, optimizer, scheduler, rng, epoch, step, best, config (YAML), meta}.
"""

from __future__ import annotations

import errno
import os
import pickle
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from dlcli.base.errors import UserError

FORMAT = "dlcli.checkpoint"
VERSION = 1


def atomic_save(obj: Any, path: Path) -> None:
    """Temp file in the same dir, flush + fsync, os.replace, fsync the dir: never a half-written file.

    A temp file left by a killed save (.NAME.XXXX.tmp) is removed by the next save of NAME.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{path.name}.*.tmp"):
            stale.unlink(missing_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _write_error(e, path) from None
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a checkpoint is an ordinary file
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        # A Ctrl-C inside torch.save's writing: its zip writer then fails on the way out ("unexpected pos") and that
        # error would hide the interrupt; the interrupt is what happened.
        interrupt = _interrupt_in(e)
        if interrupt is not None:
            raise interrupt from None
        if isinstance(e, OSError):
            raise _write_error(e, path) from None
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _interrupt_in(e: BaseException) -> BaseException | None:
    """The interrupt (KeyboardInterrupt, dl's Interrupted: BaseExceptions) an Exception was raised while handling."""
    context = e.__context__
    return context if isinstance(e, Exception) and context is not None and not isinstance(context, Exception) \
        else None


def _write_error(e: OSError, path: Path) -> Exception:
    """Full disk, read-only or forbidden directory: one line; anything else stays a real error."""
    if e.errno == errno.ENOSPC:
        return UserError(f"no space left writing {path}; the previous {path.name} (if any) is intact; free some "
                         "space, then continue with: dl train trainer.resume=auto")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR):
        return UserError(f"cannot write {path}: {e.strerror}; train where you can write, or choose a directory "
                         "with hydra.run.dir=PATH")
    return e


def make_checkpoint(*, model: torch.nn.Module, optimizer: Any, scheduler: Any, rng: dict, epoch: int, step: int,
                    best: dict, config_yaml: str, meta: dict, extra: dict | None = None) -> dict:
    state = getattr(model, "_orig_mod", model).state_dict()  # unwrap torch.compile
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": state,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng,
        "epoch": epoch,
        "step": step,
        "best": best,
        "config": config_yaml,
        "meta": meta,
        **(extra or {}),
    }


def resolve_path(path: str | Path) -> Path:
    """A checkpoint file, or a run dir (then its checkpoints/best.pt, else last.pt)."""
    p = Path(path)
    if p.is_dir():
        for name in ("best.pt", "last.pt"):
            if (p / "checkpoints" / name).is_file():
                return p / "checkpoints" / name
        raise UserError(f"{p} is a directory without checkpoints/best.pt or last.pt; give a checkpoint file "
                        "or a run dir under outputs/runs/")
    if not p.is_file():
        if p.is_symlink():  # a link to nowhere, or a loop of links
            raise UserError(f"{p} is a symbolic link that leads to no file (broken, or a loop of links); give the "
                            "checkpoint file itself")
        raise UserError(f"no such checkpoint: {p}")
    return p


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Open a dlcli checkpoint safely (weights_only=True: a pickle cannot run code) or raise UserError."""
    p = resolve_path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols of foreign files
            ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))  # torch names the global it refused
        what = f"it asks to import {found.group(1)}" if found else "it holds more than tensors and plain data"
        raise UserError(f"{p}: refused to load: {what}, and a pickle like that can run code; dl only opens "
                        "plain checkpoints written by dl train") from None
    except Exception as e:  # the unpickler raises many kinds on garbage (KeyError, RuntimeError, EOFError...)
        reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise UserError(f"{p} is not a readable checkpoint (truncated or corrupt? {reason})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{p} is a torch file but not a dlcli checkpoint (no '{FORMAT}' format tag); "
                        "dl eval/sample need a checkpoint written by dl train")
    if int(ckpt.get("version", 0)) > VERSION:
        raise UserError(f"{p} has checkpoint format version {ckpt['version']}, newer than this dlcli reads "
                        f"({VERSION}); upgrade dlcli")
    for key in ("model", "config", "meta"):
        if key not in ckpt:
            raise UserError(f"{p} is an incomplete dlcli checkpoint (no '{key}')")
    return ckpt


def config_of(ckpt: dict) -> DictConfig:
    """The config a checkpoint stores (the YAML dl train wrote), or one line if it is not that."""
    try:
        cfg = OmegaConf.create(ckpt["config"])
    except Exception as e:  # the YAML inside the checkpoint (edited, or not written by dl train)
        raise UserError(f"the checkpoint's stored config does not read as YAML ({str(e).splitlines()[0][:120]}); "
                        "it was not written by dl train, or was changed since") from None
    if not isinstance(cfg, DictConfig) or not all(k in cfg for k in ("model", "dataset", "trainer")):
        raise UserError("the checkpoint's stored config has no model/dataset/trainer sections; it was not written "
                        "by dl train")
    return cfg
