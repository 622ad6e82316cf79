"""GPU checks (`-m cuda`): every model family trains, evaluates, samples and resumes on CUDA with the default precision
(bf16 autocast) and with fp16 + GradScaler; trainer.compile=true once per family; word2vec's batched path on the GPU
against the CPU op; DDP over NCCL (a one-process group, and two processes where two GPUs exist); checkpoints that
cross between CUDA and the CPU. Skipped where CUDA is not available, so CI on a CPU collects them and moves on;
`bash bench/gpu_check.sh` runs them on a GPU machine (with the benchmarks).

DL_TEST_CUDA_AS=cpu runs the same bodies on the CPU instead (fp16 becomes bf16 autocast, which needs no GPU; NCCL
becomes gloo): a check of the commands and assertions themselves on a machine without a GPU, not of the GPU.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import torch
from conftest import CLI, DATA_DIR, FAST, read_jsonl, summary

from dlcli.models import families

DEVICE = "cpu" if os.environ.get("DL_TEST_CUDA_AS") == "cpu" else "cuda"
HAS_CUDA = torch.cuda.is_available()
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(
    DEVICE == "cuda" and not HAS_CUDA,
    reason=f"CUDA is not available (torch {torch.__version__}); bash bench/gpu_check.sh runs these on a GPU")]

# precision case -> (overrides, the precision dl train reports). fp16 needs CUDA: in a CPU run bf16 stands in for it.
if DEVICE == "cuda":
    PRECISIONS = {"default": ([], "bf16" if HAS_CUDA and torch.cuda.is_bf16_supported() else "fp32"),
                  "fp16": (["trainer.precision=fp16"], "fp16")}
else:
    PRECISIONS = {"default": ([], "fp32"), "fp16": (["trainer.precision=bf16"], "bf16")}
FAMILIES = sorted(families())  # every declared family (dlcli/models/*.py FAMILIES)
TESTS = Path(__file__).resolve().parent

# Each family's default dataset, shrunk to seconds; at least 4 steps an epoch, so a stop can land mid-epoch.
TINY = {
    "spirals": ["dataset.n_samples=600"],                                     # 420 rows, batch 64: 7 steps
    "shapes": ["dataset.n_samples=400", "trainer.batch_size=32"],             # 280 images: 9 steps
    "grammar": ["dataset.n_sentences=800"],                                   # 347 64-char windows: 6 steps
    "reverse": ["dataset.n_train=320", "dataset.n_val=64", "dataset.n_test=64", "dataset.max_len=8",
                "trainer.batch_size=64"],                                     # 5 steps
    "dates": ["dataset.n_train=320", "dataset.n_val=64", "dataset.n_test=64", "trainer.batch_size=64"],  # 5 steps
    "relations": ["dataset.sentences=2000"],  # 10k words: 11 steps of 1024 (batched, GPU), 6 of 2048 (CPU op)
}
# deterministic: cuDNN/cuBLAS pick the same kernels in every process, so a resumed run can match an uninterrupted one
ENV = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}


@cache
def default_dataset(family: str) -> str:
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="dlcli.conf", version_base="1.3"):
        return str(compose("config", overrides=[f"model={family}"]).dataset.name)


def tiny(family: str) -> list[str]:
    dataset = default_dataset(family)
    if dataset not in TINY:
        pytest.fail(f"model={family} trains on {dataset} by default: add its tiny settings to TINY in {__file__}")
    return [f"model={family}", *TINY[dataset], *FAST]


def numbers(run: Path) -> list[tuple]:
    """Every logged number of a run, keyed by (split, step, name)."""
    return [((r["split"], r["step"], k), v) for r in read_jsonl(run / "metrics.jsonl")
            for k, v in r.items() if k not in ("step", "epoch", "split") and isinstance(v, (int, float))]


def assert_close_runs(reference: Path, run: Path, tol: float) -> None:
    a, b = numbers(reference), numbers(run)
    assert [k for k, _ in a] == [k for k, _ in b], "the resumed run logged other steps than the uninterrupted one"
    bad = [(k, x, y) for (k, x), (_, y) in zip(a, b) if not math.isclose(x, y, rel_tol=tol, abs_tol=tol)]
    assert not bad, f"{len(bad)} of {len(a)} numbers differ beyond {tol}, first: {bad[:5]}"


def train_losses(run: Path) -> tuple[list[float], list[float]]:
    """(every logged step's loss, each epoch's train loss)"""
    rows = read_jsonl(run / "metrics.jsonl")
    return ([r["loss"] for r in rows if r["split"] == "step"], [r["loss"] for r in rows if r["split"] == "train"])


def assert_learns(run: Path) -> None:
    steps, epochs = train_losses(run)
    assert steps and all(x is not None and math.isfinite(x) for x in steps), steps
    assert epochs[-1] < epochs[0], f"the train loss did not fall: {epochs}"


def eval_json(cli: CLI, ckpt: Path, *overrides: str) -> dict:
    return json.loads(cli.ok("eval", str(ckpt), *overrides, "--json", env=ENV).stdout)


def assert_reproduces(reported: dict, evaluated: dict, loss_rel: float, metric_tol: float | None) -> None:
    """`dl eval` gives the test numbers training reported (summary.json): the losses (and ppl, bpc) to `loss_rel`,
    every other metric they share (accuracies, BLEU, sampled-sentence counts) to `metric_tol`, absolute or relative,
    whichever is looser; None: losses only (another device or precision moves near-tied predictions, and another
    device's RNG samples other sentences)."""
    shared = [k for k in reported if k in evaluated and isinstance(reported[k], (int, float))]
    assert "test/loss" in shared, (reported, evaluated)
    lossy = [k for k in shared if k.rsplit("/", 1)[-1] in ("loss", "ppl", "bpc")]
    bad = {k: (reported[k], evaluated[k]) for k in lossy
           if not math.isclose(reported[k], evaluated[k], rel_tol=loss_rel)}
    if metric_tol is not None:
        bad.update({k: (reported[k], evaluated[k]) for k in shared if k not in lossy and not math.isclose(
            reported[k], evaluated[k], rel_tol=metric_tol, abs_tol=metric_tol)})
    assert not bad, bad


# ---------------------------------------------------------------------------------------- every family, 2 precisions
@pytest.mark.parametrize("precision", list(PRECISIONS))
@pytest.mark.parametrize("family", FAMILIES)
def test_family_trains_evaluates_samples_and_resumes(tmp_path, family, precision):
    """3 tiny epochs on the GPU: a finite loss that falls, at the precision asked for; `dl eval` reproduces the test
    numbers on the GPU and comes close on the CPU (fp32 there); `dl sample` works; stopped by Ctrl-C mid-epoch 2 and
    resumed, the run logs what the uninterrupted one did (fp16: the GradScaler's scale is in the checkpoint)."""
    overrides, reported_precision = PRECISIONS[precision]
    args = [*tiny(family), f"device={DEVICE}", *overrides, "trainer.epochs=3", "trainer.log_every_n_steps=1",
            "trainer.deterministic=true"]
    ref = CLI(tmp_path / "reference")
    ref.cwd.mkdir()
    res = ref.ok("train", *args, env=ENV)
    run = ref.last_run()
    assert f"on {DEVICE}" in res.stdout and f"precision {reported_precision}" in res.stdout, res.stdout[:2000]
    assert_learns(run)
    s = summary(run)
    assert s["device"].startswith(DEVICE) and s["epochs"] == 3
    best = run / "checkpoints" / "best.pt"
    # same device and precision: the same numbers (16-bit autocast: to its rounding; one example may flip)
    assert_reproduces(s["test"], eval_json(ref, best), 1e-3, 0.02)
    # the checkpoint on the CPU (fp32 there): a loss close to what the GPU computed
    assert_reproduces(s["test"], eval_json(ref, best, "device=cpu"), 0.05, None)
    sample = ref.ok("sample", str(best), env=ENV)
    assert sample.stdout.strip() and "Traceback" not in sample.stderr

    steps_per_epoch = read_jsonl(run / "metrics.jsonl")
    steps_per_epoch = next(r["step"] for r in steps_per_epoch if r["split"] == "train")
    assert steps_per_epoch >= 2, f"too few steps an epoch ({steps_per_epoch}) to stop mid-epoch: grow TINY"
    stop_at = steps_per_epoch + steps_per_epoch // 2
    dl = CLI(tmp_path / "resumed")
    dl.cwd.mkdir()
    res = dl("train", *args, env={**ENV, "DL_TEST_SIGNAL_AT_STEP": str(stop_at)})
    assert res.returncode == 130, res.stdout[-2000:] + res.stderr[-3000:]
    stopped = dl.last_run()
    ckpt = torch.load(stopped / "checkpoints" / "last.pt", weights_only=True, map_location="cpu")
    assert ckpt["step"] == stop_at and ckpt["best"]["batch"] == stop_at - steps_per_epoch
    scaler = ckpt["best"].get("grad_scaler")
    if reported_precision == "fp16":
        assert scaler and scaler["scale"] > 0, scaler  # loop state: a resume scales as the uninterrupted run
    else:
        assert scaler is None
    res = dl.ok("train", f"trainer.resume={stopped}", env=ENV)
    assert f"step {stop_at}" in res.stdout
    assert json.loads((stopped / "run.json").read_text())["status"] == "completed"
    warned = [ln for ln in res.stderr.splitlines() if "deterministic" in ln]
    # fp32: to the last bits; 16-bit autocast rounds any difference in the order of a sum up to its precision
    tol = 1e-5 if reported_precision == "fp32" else 2e-3
    try:
        assert_close_runs(run, stopped, tol)
    except AssertionError as e:
        raise AssertionError(f"{e}\nnon-deterministic ops the resumed run warned about: {warned[:5]}") from None


# --------------------------------------------------------------------------------------------- torch.compile, once each
@pytest.mark.parametrize("family", FAMILIES)
def test_compiled_family_trains_and_its_checkpoint_is_the_plain_models(dl, family):
    """trainer.compile=true: trains (the loss falls), the checkpoint holds the plain module's weights (no _orig_mod.
    prefix), and `dl eval` of it, uncompiled, reproduces the test numbers."""
    res = dl.ok("train", *tiny(family), f"device={DEVICE}", "trainer.compile=true", "trainer.epochs=2",
                "trainer.log_every_n_steps=1", env=ENV, timeout=600)
    assert "Traceback" not in res.stderr
    run = dl.last_run()
    assert_learns(run)
    best = run / "checkpoints" / "best.pt"
    weights = torch.load(best, weights_only=True, map_location="cpu")["model"]
    assert weights and not [k for k in weights if "_orig_mod" in k]
    assert_reproduces(summary(run)["test"], eval_json(dl, best), 1e-3, 0.02)


# ------------------------------------------------------------------------------------------------------- word2vec
@pytest.mark.parametrize("objective", ["skipgram", "cbow"])
def test_word2vec_batched_path_on_the_gpu_learns_as_the_cpu_op_does(tmp_path, objective):
    """The planted relations (tests/test_word2vec.py's measure): batched gradients on the GPU at the default precision
    and word2vec's own SGD in C++ on the CPU both recover them, within noise of each other."""
    args = [f"model={objective}", "dataset.sentences=24000", "trainer.epochs=3", *FAST]
    gpu_side = [f"device={DEVICE}"] + (["model.cpu_kernel=false"] if DEVICE == "cpu" else [])  # the batched path
    got = {}
    for side, extra in (("batched", gpu_side), ("cpu op", ["device=cpu"])):
        cli = CLI(tmp_path / side.replace(" ", "_"))
        cli.cwd.mkdir()
        res = cli.ok("train", *args, *extra, env=ENV)
        assert ("word2vec's own SGD" in res.stdout) == (side == "cpu op"), res.stdout[:2000]
        assert_learns(cli.last_run())
        got[side] = summary(cli.last_run())["test"]
    for side, test in got.items():
        assert test["test/analogy"] > 0.8 and test["test/analogy_oov"] == 0, (side, test)
    # batched vs C++ op measured on a CPU: skipgram analogy 1.0 / 1.0, loss 1.335 / 1.321, rho 0.166 / 0.171;
    # cbow 0.974 / 0.948, loss 1.417 / 1.390, rho 0.173 / 0.170
    a, b = got["batched"], got["cpu op"]
    assert abs(a["test/analogy"] - b["test/analogy"]) <= 0.1, got
    assert math.isclose(a["test/loss"], b["test/loss"], rel_tol=0.05), got
    assert abs(a["test/similarity"] - b["test/similarity"]) <= 0.15, got


# ------------------------------------------------------------------------------------------------ CPU <-> GPU
@pytest.mark.parametrize("family", FAMILIES)
def test_a_checkpoint_saved_on_the_cpu_resumes_and_evaluates_on_the_gpu(tmp_path, family):
    """A run stopped mid-epoch on the CPU goes on on the GPU (model, optimizer and RNG state move over) and ends;
    its checkpoints, saved on the GPU, evaluate on the CPU as on the GPU (fp32 on both: the same losses)."""
    args = [*tiny(family), "trainer.epochs=2", "trainer.precision=fp32"]
    dl = CLI(tmp_path)
    res = dl("train", *args, "device=cpu", env={**ENV, "DL_TEST_SIGNAL_AT_STEP": "3"})
    assert res.returncode == 130, res.stdout[-2000:] + res.stderr[-3000:]
    run = dl.last_run()
    on_cpu = eval_json(dl, run / "checkpoints" / "last.pt", "device=cpu")
    on_gpu = eval_json(dl, run / "checkpoints" / "last.pt", f"device={DEVICE}")
    assert_reproduces(on_cpu, on_gpu, 0.02, None)  # fp32 both (TF32 convolutions on the GPU)
    res = dl.ok("train", f"trainer.resume={run}", f"device={DEVICE}", env=ENV)
    assert "step 3" in res.stdout and f"on {DEVICE}" in res.stdout
    s = summary(run)
    assert s["epochs"] == 2 and s["device"].startswith(DEVICE)
    steps, _ = train_losses(run)
    assert all(x is not None and math.isfinite(x) for x in steps)
    best = run / "checkpoints" / "best.pt"
    assert_reproduces(s["test"], eval_json(dl, best, "device=cpu"), 0.02, None)


# ---------------------------------------------------------------------------------------------------------- DDP
DDP_SCRIPT = '''
"""One DDP step of every family (tests/ddp_families.py's cases) on the GPU over NCCL, against one process stepping on
the whole batch. One process: dl starts no group of its own (trainer.devices=1 runs plainly), so one is made here and
dl's DDP wrapping (distributed.train_step) is asked for with it. Several (torchrun): dl's own join."""
import json
import os
import sys

import torch
import torch.distributed as dist
from hydra import compose, initialize_config_module

sys.path.insert(0, sys.argv[3])
from ddp_families import FAMILIES, compare_one_step  # noqa: E402

from dlcli.data import build_task  # noqa: E402
from dlcli.engine import distributed  # noqa: E402
from dlcli.models import build_model  # noqa: E402


def main(out, device_type):
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 sums, compared to 1e-5
    device = torch.device(device_type)
    if int(os.environ["WORLD_SIZE"]) > 1:
        distributed.init(device)
        device = distributed.local_device(device)
    else:
        if device.type == "cuda":
            torch.cuda.set_device(0)
            device = torch.device("cuda", 0)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    world, rank = dist.get_world_size(), dist.get_rank()

    def wrapped(model, task):  # a group of one: wrapped in DDP all the same, then stepped as the world it is
        distributed._world, distributed._rank = max(world, 2), rank
        step = distributed.train_step(model, task)
        distributed._world = world
        return step
    results = {"backend": str(dist.get_backend()), "world": world, "families": {}}
    with initialize_config_module(config_module="dlcli.conf", version_base="1.3"):
        for family, overrides in FAMILIES.items():
            cfg = compose("config", overrides=[f"model={family.split('_')[0]}", *overrides])
            torch.manual_seed(0)
            task = build_task(cfg.dataset, cfg.loss, device)
            model = build_model(cfg.model, task.meta).to(device)
            results["families"][family] = compare_one_step(model, task, device, wrapped)
    if rank == 0:
        with open(out, "w") as f:
            json.dump(results, f, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
'''


def torchrun(cwd: Path, nproc: int, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "DL_DEBUG"}
    env.update({"DL_DATA_DIR": str(DATA_DIR), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **ENV})
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                           *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)


def ddp_step_of_every_family(tmp_path: Path, nproc: int) -> dict:
    script, out = tmp_path / "ddp_step.py", tmp_path / "families.json"
    script.write_text(DDP_SCRIPT)
    res = torchrun(tmp_path, nproc, str(script), str(out), DEVICE, str(TESTS))
    assert res.returncode == 0, res.stderr[-4000:]
    results = json.loads(out.read_text())
    assert results["backend"] == ("nccl" if DEVICE == "cuda" else "gloo") and results["world"] == nproc
    assert set(results["families"]) == {*families(), "cnn_bn", "lstm_text"}  # every family (tests/ddp_families.py)
    return results["families"]


def test_one_process_nccl_group_steps_every_family_as_plain_pytorch(tmp_path):
    """DDP (dl's wrapping: dense word2vec tables, SyncBatchNorm on GPUs) over a one-process NCCL group: the same
    step as the plain model."""
    for family, r in ddp_step_of_every_family(tmp_path, 1).items():
        assert r["moved"] > 1e-3 and r["spread"] == 0.0, (family, r)
        assert r["diff"] < 1e-5, (family, r)


needs_two = pytest.mark.skipif(DEVICE == "cuda" and torch.cuda.device_count() < 2,
                               reason=f"{torch.cuda.device_count()} CUDA device(s): DDP equivalence needs 2")


@needs_two
def test_two_gpus_step_every_family_as_one_process(tmp_path):
    """2 NCCL processes, one global batch: the weights one process gets (BatchNorm too: SyncBatchNorm on GPUs)."""
    for family, r in ddp_step_of_every_family(tmp_path, 2).items():
        assert r["moved"] > 1e-3 and r["spread"] == 0.0, (family, r)
        if DEVICE == "cuda" or family != "cnn_bn":  # on a CPU each process normalizes with its own rows
            assert r["diff"] < 1e-5, (family, r)


@needs_two
def test_two_gpus_train_as_one_through_the_cli(tmp_path):
    """`dl train trainer.devices=2` (NCCL) logs the numbers one process logs (fp32: the sums' order aside)."""
    args = [*tiny("mlp"), f"device={DEVICE}", "trainer.precision=fp32", "trainer.epochs=2",
            "trainer.log_every_n_steps=1", "trainer.deterministic=true"]
    runs = []
    for devices in (1, 2):
        cli = CLI(tmp_path / f"devices{devices}")
        cli.cwd.mkdir()
        cli.ok("train", *args, f"trainer.devices={devices}", env=ENV)
        runs.append(cli.last_run())
    assert_close_runs(runs[0], runs[1], 1e-4)
