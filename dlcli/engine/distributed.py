"""Scale-out: the same `dl train` on several processes with torch.distributed (DDP). Nothing home-made: torchrun (or
`dl train trainer.devices=N`, which runs torch.distributed.run for you) starts the processes, a Hydra submitit job
with several tasks is joined through submitit's own environment, DDP all-reduces the gradients.

The contract (README "Beyond one machine"):
- Backend: nccl when the run's device is CUDA (each process on cuda:LOCAL_RANK), gloo otherwise.
- trainer.batch_size is the GLOBAL batch. Every process draws the same seeded batch and keeps its slice of the rows,
  and its gradient is weighted by its share of the rows before DDP averages: a step sees the same examples and takes
  the same update as one process (exact for per-example means; for per-token means over padded sequences, e.g.
  variable-length seq2seq, the weight is the share of rows, not of tokens).
- Metrics: the tasks' summed stats are all-reduced before they are summarized, so train/val/test numbers are one
  process's; eval metrics beyond those sums (exact match, BLEU, analogies) are computed by rank 0 and broadcast.
  Every decision that ends a step or a run (signal, max_time, non-finite loss, best, early stopping) is the same on
  every rank, so no rank waits for a collective that the others skipped.
- Files: rank 0 alone writes the run dir; checkpoints hold the plain module's state_dict, so a run saved from N
  processes resumes on 1 and the other way round.
- word2vec: its sparse embedding gradients are made dense under DDP (DDP's buckets and NCCL all-reduce dense
  tensors); every step then all-reduces both whole tables, so word2vec gains little from several processes.
"""

from __future__ import annotations

import atexit
import inspect
import logging
import os
import random
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from dlcli.base.errors import UserError
from dlcli.base.overrides import hydra_path

_rank, _world, _local = 0, 1, 0
_control: Any = None  # a gloo group for the per-step CPU flags when the main group is nccl (no GPU sync for them)

# ------------------------------------------------------------------------------------------------------------ who am I
def launched() -> bool:
    """This process is one of several started by torchrun (or any env:// launcher)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ
    except ValueError:
        return False


def active() -> bool:
    return _world > 1


def rank() -> int:
    return _rank


def world_size() -> int:
    return _world


def is_main() -> bool:
    """Rank 0: the one process that writes the run dir and speaks to the user."""
    return _rank == 0


def check_devices(devices: Any, device: torch.device) -> None:
    """trainer.devices: how many processes `dl train` starts on this machine."""
    if not isinstance(devices, int) or isinstance(devices, bool) or devices < 1:
        raise UserError(f"trainer.devices={devices}: a positive integer (processes on this machine, one per GPU)")
    if devices > 1 and device.type == "mps":
        raise UserError("trainer.devices>1: torch.distributed has no backend for Apple MPS; use device=cpu")
    if devices > 1 and device.type == "cuda" and devices > torch.cuda.device_count():
        raise UserError(f"trainer.devices={devices}: only {torch.cuda.device_count()} CUDA device(s) here; one "
                        "process per GPU (device=cpu runs several processes on the CPU)")


def init(device: torch.device) -> None:
    """Join the process group that the environment describes: torchrun's RANK/WORLD_SIZE/MASTER_ADDR..., or a submitit
    job's tasks (exported by submitit itself). Nothing on one process; idempotent."""
    global _rank, _world, _local, _control
    if _world > 1:
        return
    if not launched():
        _export_submitit_env()
        if not launched():
            return

    if device.type == "mps":
        raise UserError("several processes: torch.distributed has no backend for Apple MPS; use device=cpu")
    _local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(_local % torch.cuda.device_count())
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    _rank, _world = dist.get_rank(), dist.get_world_size()
    _control = dist.new_group(backend="gloo") if backend == "nccl" else None
    atexit.register(_shutdown)
    if _rank != 0:  # rank 0 speaks for the run; errors (stderr) stay visible from every rank
        sys.stdout = open(os.devnull, "w")
        logging.getLogger("dlcli").disabled = True


def _export_submitit_env() -> None:
    """Inside a Hydra submitit job with several tasks (hydra.launcher.tasks_per_node / nodes), let submitit set the
    env:// variables torch.distributed reads (MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK)."""
    if "SUBMITIT_EXECUTOR" not in os.environ:
        return
    try:
        import submitit  # optional: only inside a submitit job

        if submitit.JobEnvironment().num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    except (ImportError, RuntimeError):
        return


def _shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    """Each process on its own GPU (cuda:LOCAL_RANK); the CPU is shared."""
    if _world > 1 and device.type == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return device


def hydra_overrides() -> list[str]:
    """Hydra overrides for ranks other than 0: they write no .hydra/ and no train.log into the shared run dir."""
    if _rank == 0:
        return []
    return ["hydra.output_subdir=null", "~hydra.job_logging.handlers.file", "hydra.job_logging.root.handlers=[]"]


def check_batch_size(batch_size: int) -> None:
    if batch_size < _world:
        raise UserError(f"trainer.batch_size={batch_size} is the global batch, split across {_world} processes: "
                        f"give at least {_world}")


def seed_rank(seed: int, step: int) -> None:
    """Dropout and other random draws differ between ranks; rank 0 keeps one process's stream."""
    if _rank > 0:
        s = (seed * 1_000_003 + step) * 7919 + _rank
        random.seed(s)
        torch.manual_seed(s)

# ------------------------------------------------------------------------------------------------------- the step
class _Step(nn.Module):
    """DDP hooks the gradients of what its forward() computes: the task's whole step is the forward (word2vec's
    loss is model.loss(...), not model(...))."""

    def __init__(self, model: nn.Module, task: Any):
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, *batch: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        return self.task.step(self.model, batch)


def train_step(model: nn.Module, task: Any) -> Callable[[tuple], tuple[Tensor, dict[str, Tensor]]]:
    """batch -> (loss, stats) for the training loop: task.step on one process; under DDP this rank's slice through
    DistributedDataParallel, the loss's gradient weighted so that DDP's average is one process's gradient."""
    if _world == 1:
        return lambda batch: task.step(model, batch)

    for m in model.modules():
        if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.sparse:
            m.sparse = False  # dense under DDP: its buckets and NCCL all-reduce dense gradients (see module doc)
    cuda = next(model.parameters()).device.type == "cuda"
    if cuda:  # batch statistics over the global batch, as one process has them (SyncBatchNorm needs a GPU)
        nn.SyncBatchNorm.convert_sync_batchnorm(model)
    # Rank 0's BatchNorm running stats before each forward; other buffers are constants, identical on every rank.
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    sync = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(
        DistributedDataParallel.__init__).parameters else "broadcast_buffers"  # renamed in torch 2.13
    ddp = DistributedDataParallel(_Step(model, task), device_ids=[torch.cuda.current_device()] if cuda else None,
                                  **{sync: has_bn})
    # word2vec's step is the gradient of the summed loss (data/corpus.py): ranks' gradients add up, not average
    sums = bool(getattr(task, "gradient_of_sum", False))
    return lambda batch: _sharded(lambda part: ddp(*part), batch, sums)


def eval_step(model: nn.Module, task: Any) -> Callable[[tuple], tuple[Tensor, dict[str, Tensor]]]:
    """batch -> (loss, stats) for evaluation: each rank steps through its slice (stats are summed afterwards)."""
    if _world == 1:
        return lambda batch: task.step(model, batch)
    return lambda batch: _sharded(lambda part: task.step(model, part), batch, False)


def _sharded(step: Callable[[tuple], tuple[Tensor, dict]], batch: tuple, sums: bool) -> tuple[Tensor, dict]:
    """Step through this rank's contiguous slice of the batch's rows (tensors whose first dimension is not the rows,
    such as word2vec's shared negatives, go whole to every rank)."""
    rows = len(batch[0])
    mine = tuple(t.tensor_split(_world)[_rank] if len(t) == rows else t for t in batch)
    n = len(mine[0])
    if n == 0 < rows:  # fewer rows than ranks: a 1-row stand-in weighted 0 (DDP needs every rank in every step)
        mine = tuple(t[:1] if len(t) == rows else t for t in batch)
    loss, stats = step(mine)
    weight = (float(_world) if sums else _world * n / rows) if rows else 1.0
    if n == 0 < rows:
        stats, weight = {k: torch.zeros_like(v) for k, v in stats.items()}, 0.0
    if weight != 1.0:  # same value, gradient times weight
        loss = loss + (weight - 1.0) * (loss - loss.detach())
    return loss, stats

# ------------------------------------------------------------------------------------------------ agreeing on things
def sum_stats(stats: dict[str, Tensor]) -> dict[str, Tensor]:
    """The ranks' summed stats added up (one process's sums over the whole data)."""
    if _world == 1:
        return stats

    out = {}
    for k, v in stats.items():
        out[k] = v.detach().clone()
        dist.all_reduce(out[k])
    return out


def mean(value: Tensor) -> Tensor:
    """The average of a tensor over ranks (the logged step loss)."""
    if _world == 1:
        return value

    out = value.detach().clone()
    dist.all_reduce(out)
    return out / _world


def agree(signum: int | None, flag: bool = False) -> tuple[int | None, bool]:
    """(a signal any rank received, whether any rank raised the flag): one answer for all, e.g. stop now."""
    if _world == 1:
        return signum, flag

    t = torch.tensor([signum or 0, int(flag)], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_control)
    return int(t[0]) or None, bool(t[1])


def all_true(flag: bool) -> bool:
    """True when the flag holds on every rank (e.g. every rank's losses are finite)."""
    if _world == 1:
        return flag

    t = torch.tensor([int(flag)], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=_control)
    return bool(t[0])


def barrier() -> None:
    if _world > 1:
        dist.barrier(group=_control)


def on_main(fn: Callable[[], Any]) -> Any:
    """fn() computed by rank 0 alone, its result given to every rank."""
    if _world == 1:
        return fn()

    box = [fn() if _rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_text(text: str | None) -> str:
    """Rank 0's string (e.g. the run dir it chose) on every rank."""
    return on_main(lambda: text)


def broadcast_module(model: nn.Module) -> None:
    """Every rank takes rank 0's weights (e.g. the best checkpoint that rank 0 alone has read)."""
    if _world == 1:
        return

    for t in model.state_dict().values():
        dist.broadcast(t, src=0)

# -------------------------------------------------------------------------------------------------- the launcher
def launch(argv: list[str], nproc: int) -> int:
    """`dl train trainer.devices=N`: `python -m dlcli train ARGV` on N processes of this machine through
    torch.distributed.run (what `torchrun --standalone --nproc-per-node N -m dlcli train ARGV` does). Returns the exit
    code: the lowest failing rank's (rank 0 has said why), or 128+signal when this launcher was signalled (torchrun
    passes the signal on: the workers finish their step and save checkpoints/last.pt)."""
    # the launcher's modules: only for trainer.devices>1
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    for name in list(logging.root.manager.loggerDict):  # the agent's own notes (dl says what happened)
        if name.startswith(("torch.distributed.elastic", "torch.distributed.run")):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    args = parse_args(["--standalone", f"--nproc-per-node={nproc}", "-m", "dlcli", "train", *argv])
    try:
        run(args)
    except ChildFailedError as e:
        code = e.failures[min(e.failures)].exitcode
        return 128 - code if code < 0 else code
    except SignalException as e:
        return 128 + int(e.sigval)
    return 0


def job_argv(task_overrides: list[str], resume: Any, run_dir: Any) -> list[str]:
    """The arguments that make each launched process run this same Hydra job in its run dir."""
    argv = [o for o in task_overrides if o.split("=", 1)[0].lstrip("+") != "trainer.resume"]
    # A resumed run's dir is the checkpoint's (dl train finds it); the path goes unquoted, as a user types it.
    return [*argv, f"trainer.resume={resume}"] if resume else [*argv, f"hydra.run.dir={hydra_path(run_dir)}"]
