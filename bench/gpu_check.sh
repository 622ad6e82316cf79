#!/usr/bin/env bash
# The GPU checks in one command: the machine (nvidia-smi, torch.cuda), the cuda tests (tests/test_cuda.py) and the
# GPU benchmarks (python -m bench CASE --device cuda --quick), then a summary of all of it.
#
#   bash bench/gpu_check.sh        from the repository root, with the project installed with the platform's CUDA torch
#                                  (pip install -e ".[test]"; ".[bench]" is in it: gensim, word2vec's baseline)
#
# Writes bench/results/<date>_<gpu name>.json: the GPU, every benchmark figure and the tests' outcome. Fits 8 minutes
# on one H100 (GPU_CHECK_BUDGET_S=480): each step has a timeout, cut to what is left of the budget, and a step that
# fails or times out does not stop the others; the exit code is 1 when any step failed. Without CUDA it says why,
# runs the cuda tests anyway (they skip: this shows they collect) and exits 0.
#
# Knobs: DL_DATA_DIR (default ../shared/data), PYTHON (default python), GPU_CHECK_BUDGET_S (480),
# GPU_CHECK_WORKERS (pytest-xdist workers for the tests, 8), GPU_CHECK_BENCH (the benchmark cases, in this order).
set -u
cd "$(dirname "$0")/.." || exit 2
export DL_DATA_DIR="${DL_DATA_DIR:-$(cd .. && pwd)/shared/data}"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python}"
BUDGET="${GPU_CHECK_BUDGET_S:-480}"
WORKERS="${GPU_CHECK_WORKERS:-8}"
# What the GPU figures come from, most wanted first: GPT-2 small tokens/s + MFU and shakespeare in 2 minutes
# (transformer), 2x512 LSTM vs bare cuDNN (recurrent/lstm), MNIST time to 99% (mnist), word2vec words/s (word2vec);
# then dl's loop against a bare loop (loop) and index batching against a DataLoader (data) if time is left.
read -r -a CASES <<< "${GPU_CHECK_BENCH:-transformer recurrent/lstm mnist word2vec loop data}"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
START=$SECONDS
STEPS="$TMP/steps.tsv"  # name, exit code, seconds, status
: > "$STEPS"

left() { echo $((BUDGET - (SECONDS - START))); }

# step NAME WANTED_TIMEOUT_S COMMAND...: runs it with min(wanted, what is left - 10 s), records how it ended
step() {
    local name=$1 want=$2 t rc t0
    shift 2
    t=$(($(left) - 10))
    ((t > want)) && t=$want
    if ((t < 20)); then
        echo "== $name: skipped, the ${BUDGET}s budget is spent"
        printf '%s\t%s\t%s\t%s\n' "$name" "-" 0 "skipped (no time left)" >> "$STEPS"
        return 0
    fi
    echo
    echo "== $name (timeout ${t}s): $*"
    t0=$SECONDS
    timeout -k 10 "$t" "$@"
    rc=$?
    local status=passed
    if ((rc == 124 || rc == 137)); then
        status="TIMED OUT after ${t}s"
    elif ((rc != 0)); then
        status="FAILED (exit $rc)"
    fi
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" "$status" >> "$STEPS"
    echo "== $name: $status in $((SECONDS - t0))s"
    return 0
}

# ------------------------------------------------------------------------------------------------- (a) the machine
echo "== GPU check, $(date '+%Y-%m-%d %H:%M:%S'), repo $(pwd), DL_DATA_DIR=$DL_DATA_DIR"
if command -v nvidia-smi > /dev/null; then
    timeout 30 nvidia-smi || echo "nvidia-smi failed (exit $?)"
else
    echo "nvidia-smi: not found (no NVIDIA driver on this machine, or not on PATH)"
fi
timeout 120 "$PY" - "$TMP/gpu.json" << 'EOF'
import json, os, sys

import torch

info = {"torch": torch.__version__, "cuda_build": torch.version.cuda, "available": torch.cuda.is_available(),
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}
print(f"torch {torch.__version__}, built for CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
if info["available"]:
    info.update(cudnn=torch.backends.cudnn.version(), nccl=".".join(map(str, torch.cuda.nccl.version())),
                bf16=torch.cuda.is_bf16_supported(), devices=[])
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        d = {"name": p.name, "capability": f"{p.major}.{p.minor}", "memory_gib": round(p.total_memory / 2**30, 1),
             "multiprocessors": p.multi_processor_count}
        info["devices"].append(d)
        print(f"cuda:{i}: {d['name']}, compute capability {d['capability']}, {d['memory_gib']} GiB, "
              f"{d['multiprocessors']} SMs")
    print(f"NCCL {info['nccl']}, bf16 supported: {info['bf16']}")
    x = torch.randn(1024, 1024, device="cuda")
    torch.cuda.synchronize()
    print(f"a matmul on cuda:0: ok ({float((x @ x).abs().mean()):.2f})")
else:
    if torch.version.cuda is None:
        why = (f"this torch ({torch.__version__}) is a CPU-only build; install the platform's CUDA build, e.g. "
               "pip install torch --index-url https://download.pytorch.org/whl/cu124, then pip install -e .")
    elif os.environ.get("CUDA_VISIBLE_DEVICES") is not None and not os.environ["CUDA_VISIBLE_DEVICES"].strip():
        why = "CUDA_VISIBLE_DEVICES is empty: every GPU is hidden from this process"
    else:
        why = (f"torch {torch.__version__} is built for CUDA {torch.version.cuda} but finds no usable GPU (no NVIDIA "
               "GPU, no driver, or a driver older than that CUDA)")
    info["why"] = why
    print(f"CUDA is not available: {why}")
json.dump(info, open(sys.argv[1], "w"), indent=1)
EOF
info_rc=$?
if ((info_rc != 0)) || [ ! -s "$TMP/gpu.json" ]; then
    echo "error: could not ask torch about CUDA (exit $info_rc): is the project installed in this Python ($PY)?"
    exit 2
fi
HAS_CUDA=$("$PY" -c "import json, sys; print(int(json.load(open(sys.argv[1]))['available']))" "$TMP/gpu.json")

# ------------------------------------------------------------------------------------------- no GPU: collect only
if [ "$HAS_CUDA" != 1 ]; then
    echo
    echo "== NO GPU CHECK ON THIS MACHINE: $("$PY" -c "import json, sys; print(json.load(open(sys.argv[1]))['why'])" \
        "$TMP/gpu.json")"
    echo "== the cuda tests need a GPU and skip here; running them to show they collect"
    echo "   (no benchmarks, no results file)"
    timeout 300 "$PY" -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider -n 0 -rs | tail -n 15
    rc=${PIPESTATUS[0]}
    if ((rc != 0)); then
        echo "== the cuda tests did not collect cleanly (pytest exit $rc)"
        exit 1
    fi
    echo "== the cuda tests collect and skip without CUDA; nothing on a GPU was checked. Exit 0."
    exit 0
fi

# ------------------------------------------------------------------------------------------------- (b) the tests
step "tests (pytest -m cuda, $WORKERS workers)" 270 "$PY" -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider \
    -n "$WORKERS" --maxprocesses="$WORKERS" -rfEs --durations=10 --junitxml="$TMP/junit.xml"

# ---------------------------------------------------------------------------------------------- (c) the benchmarks
for case in "${CASES[@]}"; do
    want=120
    case "$case" in transformer*) want=260 ;; word2vec*) want=150 ;; esac
    step "bench $case" "$want" "$PY" -m bench "$case" --device cuda --quick --note "bench/gpu_check.sh" \
        --out "$TMP/bench_${case//\//_}.json"
done

# ------------------------------------------------------------------------------------------------- the summary
"$PY" - "$TMP" "$STEPS" "$((SECONDS - START))" << 'EOF'
import glob, json, os, re, sys, time
import xml.etree.ElementTree as ET
from pathlib import Path

tmp, steps_file, seconds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
gpu = json.loads((tmp / "gpu.json").read_text())
steps = [dict(zip(("name", "exit", "seconds", "status"), line.rstrip("\n").split("\t")))
         for line in open(steps_file) if line.strip()]
tests = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failures": []}
junit = tmp / "junit.xml"
if junit.is_file():
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}"
        if case.find("failure") is not None:
            tests["failed"] += 1
            tests["failures"].append(name)
        elif case.find("error") is not None:
            tests["errors"] += 1
            tests["failures"].append(name + " (error)")
        elif case.find("skipped") is not None:
            tests["skipped"] += 1
        else:
            tests["passed"] += 1
results, machine, case_seconds = [], None, {}
for f in sorted(glob.glob(str(tmp / "bench_*.json")), key=os.path.getmtime):  # in the order they ran
    data = json.loads(Path(f).read_text())
    machine = machine or data.get("machine")
    case_seconds.update(data.get("case_seconds", {}))
    results += data["results"]
name = gpu["devices"][0]["name"] if gpu.get("devices") else "gpu"
date = time.strftime("%Y-%m-%d")
out = Path("bench/results") / f"{date}_{re.sub(r'[^A-Za-z0-9.]+', '-', name).strip('-')}.json"
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps({"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": "bash bench/gpu_check.sh",
                           "gpu": gpu, "machine": machine, "seconds": seconds, "steps": steps, "tests": tests,
                           "case_seconds": case_seconds, "results": results}, indent=2, default=str))


def fmt(v):
    if v is None:
        return "-"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"


print("\n" + "=" * 100)
print(f"GPU check summary: {name}, torch {gpu['torch']} (CUDA {gpu['cuda_build']}), {seconds}s in all")
print(f"tests: {tests['passed']} passed, {tests['failed']} failed, {tests['errors']} errors, "
      f"{tests['skipped']} skipped")
for f in tests["failures"]:
    print(f"  FAILED {f}")
print("benchmarks:")
for r in results:
    d = r.get("details") or {}
    if d.get("skipped"):
        print(f"  {r['case']}: skipped: {d['skipped']}")
        continue
    text = f"  {r['case']}: {fmt(r['dl'])} {r['metric']}"
    if r.get("baseline") is not None:
        text += f" vs {fmt(r['baseline'])} ({r['baseline_name']})"
    if r.get("ratio") is not None:
        text += f"; {r['ratio_name']} {r['ratio']:.3f}"
    if d.get("mfu_dl") is not None:
        text += f"; MFU {d['mfu_dl']:.1%} (bare {d['mfu_bare']:.1%})"
    if d.get("seconds_to_goal") is not None or r["case"] == "transformer/shakespeare":
        text += f"; goal reached after {fmt(d.get('seconds_to_goal'))} s"
    if r.get("goal"):
        text += f"; goal {r['goal']}: {'met' if r['met'] else 'NOT met' if r['met'] is False else '-'}"
    print(text)
print("steps:")
for s in steps:
    print(f"  {s['name']}: {s['status']} ({s['seconds']}s)")
print(f"wrote {out}")
failed = [s for s in steps if s["status"] != "passed" and not s["status"].startswith("skipped")]
print("RESULT: " + ("every step passed" if not failed else f"{len(failed)} step(s) failed: "
                    + ", ".join(s["name"] for s in failed)))
sys.exit(1 if failed else 0)
EOF
exit $?
