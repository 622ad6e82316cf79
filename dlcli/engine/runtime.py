"""Seed, device and precision: everything about *where* and *how* the numbers are computed."""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass
from typing import Any

import torch

from dlcli.base.errors import UserError
from dlcli.engine.distributed import local_device

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class Runtime:
    device: torch.device
    precision: str  # fp32 | bf16 | fp16 (resolved)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        return torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None


def resolve_device(device_cfg: Any) -> torch.device:
    """device=auto|cpu|cuda|mps (a group config {name, index} or a plain string)."""
    name = device_cfg if isinstance(device_cfg, str) else device_cfg.get("name", "auto")
    index = 0 if isinstance(device_cfg, str) else device_cfg.get("index", 0)
    if name not in DEVICES:
        raise UserError(f"device={name}: unknown device; choose one of: {', '.join(DEVICES)}")
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("mps" if has_mps else "cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("device=cuda: CUDA is not available on this machine (torch "
                            f"{torch.__version__}); use device=cpu or device=auto")
        if index >= torch.cuda.device_count():
            raise UserError(f"device.index={index}: only {torch.cuda.device_count()} CUDA device(s) here")
        return torch.device("cuda", index)
    if name == "mps" and not has_mps:
        raise UserError("device=mps: Apple MPS is not available on this machine; use device=cpu or device=auto")
    return torch.device(name)


def native_bf16(device: torch.device) -> bool:
    """bf16 in hardware on this GPU (Ampere and later): torch also says yes where it is only emulated (V100, T4),
    where bf16 autocast would be slower than fp32."""
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=False)


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision not in PRECISIONS:
        raise UserError(f"trainer.precision={precision}: choose one of: {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" and native_bf16(device) else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise UserError(f"trainer.precision=fp16 needs a CUDA device (this run is on {device.type}); "
                        "use fp32 or bf16")
    return precision


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def setup(cfg: Any) -> Runtime:
    device = local_device(resolve_device(cfg.device))  # under DDP each process has its own GPU
    precision = resolve_precision(cfg.trainer.precision, device)
    seed_everything(int(cfg.trainer.seed))
    if cfg.trainer.get("deterministic", False):
        torch.use_deterministic_algorithms(True, warn_only=True)
    configure_backends(device, bool(cfg.trainer.get("deterministic", False)))
    return Runtime(device=device, precision=precision)


def configure_backends(device: torch.device, deterministic: bool) -> None:
    """The GPU math a run uses (TF32, cuDNN autotuning); dl eval and dl sample set the same, so they compute as
    training did."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = not deterministic


def rng_state() -> dict:
    """Every RNG the run uses, in a form torch.load(weights_only=True) accepts."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():  # saved on a machine with more GPUs: the ones here
        for index, gpu_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(gpu_state, index)
