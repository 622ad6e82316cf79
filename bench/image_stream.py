"""An image folder in memory vs streamed from the memory-mapped uint8 cache: `dl train model=cnn dataset=image_folder`
for 1 epoch with dataset.in_memory=true and =false, each a first run (decodes the PNGs into its own cache) and a
second (maps the cache): peak memory, images/s of the epoch, wall time; and the cache's size on disk.

    python -m bench.image_stream                          # 20,000 RGB 64x64 PNGs of 10 classes, made in a temp dir
    python -m bench.image_stream --images 2000 --json r.json dataset.num_workers=2

Peak memory: the dl process's own peak RSS (its rusage), and the peak of the whole process tree (dl + DataLoader
workers) sampled from /proc/PID/smaps_rollup every 0.1 s as PSS (a page the forked workers share with dl counts
once), split into anonymous memory (what the processes own) and file-backed pages (the libraries and the mapped
cache: page cache the kernel can drop under pressure). images/s: the training images over the epoch's
seconds as dl prints them (its training steps plus the validation pass).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from bench.common import data_dir, dl_command, machine

# a small CNN, so that the epoch's time shows the data path more than the model
MODEL = ["model=cnn", "model.channels=[8,16]", "model.hidden_sizes=[32]", "trainer.batch_size=128"]


def make_folder(root: Path, n: int, classes: int = 10, side: int = 64) -> int:
    """n RGB side x side PNGs, `classes` folders: a class colour and stripe direction under noise. Returns bytes."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:side, :side]
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        c = i % classes
        stripes = ((yy if c % 2 else xx) * (2 + c // 2) // side) % 2
        a = rng.integers(0, 60, (side, side, 3)) + stripes[..., None] * (60 + 15 * np.array([c % 3, c % 5, c % 7]))
        Image.fromarray(a.clip(0, 255).astype(np.uint8)).save(root / f"class{c}" / f"{i:06d}.png")
    return sum(p.stat().st_size for p in root.rglob("*.png"))


def _tree(pid: int) -> list[int]:
    """pid and its descendants, from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _pss_kb(pid: int) -> tuple[int, int]:
    """(anonymous, file-backed) proportional set size of one process in kB: a page shared with the forked workers
    counts once over the tree, not once per process as RSS would."""
    anon = file = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss_Anon:"):
                anon = int(line.split()[1])
            elif line.startswith(("Pss_File:", "Pss_Shmem:")):
                file += int(line.split()[1])
    except OSError:
        pass
    return anon, file


def timed_train(args: list[str], env: dict[str, str], cwd: Path) -> dict:
    """`dl train ARGS`: its output, wall time, own peak RSS, and the process tree's peak (sampled)."""
    cmd = dl_command(["train", *args])
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, "DL_DATA_DIR": str(data_dir()), **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
    peak = {"tree_mb": 0.0, "anon_mb": 0.0, "file_mb": 0.0}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            sizes = [_pss_kb(p) for p in _tree(proc.pid)]
            anon, file = sum(a for a, _ in sizes) / 1024, sum(f for _, f in sizes) / 1024
            if anon + file > peak["tree_mb"]:
                peak.update(tree_mb=anon + file, anon_mb=anon, file_mb=file)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    sampler.join()
    lines = out.splitlines()
    epoch = next((ln for ln in lines if ln.startswith("epoch 1/1")), "")
    seconds = re.search(r"\s([\d.]+)s(\s|$)", epoch)
    data = [ln[6:] for ln in lines if ln.startswith("data: ")]
    train = re.search(r"train (\d+) / val", data[0]) if data else None
    return {"returncode": os.waitstatus_to_exitcode(status), "wall_s": round(time.perf_counter() - start, 1),
            "epoch_s": float(seconds.group(1)) if seconds else None,
            "train_images": int(train.group(1)) if train else None,
            "peak_rss_mb": round(usage.ru_maxrss / 1024), **{k: round(v) for k, v in peak.items()},
            "data": data[1:], "tail": lines[-5:] if os.waitstatus_to_exitcode(status) else []}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=20_000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("overrides", nargs="*", help="more dl train overrides")
    args = ap.parse_args()
    result: dict = {"machine": machine(), "args": vars(args), "runs": []}
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/tmp")) as tmp:
        folder = Path(tmp) / "pics"
        made = time.perf_counter()
        result["png_bytes"] = make_folder(folder, args.images, side=args.size)
        print(f"{args.images:,} PNGs ({result['png_bytes'] / 1e6:.0f} MB) made in {time.perf_counter() - made:.0f} s",
              flush=True)
        for in_memory in ("true", "false"):
            cache = Path(tmp) / f"cache-{in_memory}"
            dl_args = [*MODEL, "dataset=image_folder", f"dataset.path={folder}", f"dataset.image_size={args.size}",
                       f"dataset.in_memory={in_memory}", "trainer.epochs=1", "trainer.summary=false",
                       "trainer.plots=false", "logger.console=true", *args.overrides]
            for run in ("first", "second"):
                row = {"in_memory": in_memory, "run": run, **timed_train(dl_args, {"DL_CACHE_DIR": str(cache)},
                                                                         Path(tmp))}
                if row["epoch_s"] and row["train_images"]:
                    row["images_per_s"] = round(row["train_images"] / row["epoch_s"])
                result["runs"].append(row)
                print(f"in_memory={in_memory:5s} {run:6s}: {row.get('images_per_s')} images/s (epoch "
                      f"{row['epoch_s']} s), {row['wall_s']} s in all; peak RSS dl {row['peak_rss_mb']:,} MB, "
                      f"tree PSS {row['tree_mb']:,} MB ({row['anon_mb']:,} anon + {row['file_mb']:,} file)", flush=True)
                for line in row["data"] + row["tail"]:
                    print("    " + line, flush=True)
            result[f"cache_bytes_{in_memory}"] = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())
        print(f"cache on disk: {result['cache_bytes_false'] / 1e6:.0f} MB (uint8 "
              f"{args.images:,} x {args.size} x {args.size} x 3 = {args.images * args.size ** 2 * 3 / 1e6:.0f} MB)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
