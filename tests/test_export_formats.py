"""dl export --format safetensors|torchscript|onnx: each file of a representative set of tiny checkpoints (mlp on a
CSV, cnn on an image folder, a tied-weights LSTM LM, a transformer seq2seq, skip-gram) loads in a process that never
imports dlcli, and with its sidecar's preprocessing applied by hand gives what `dl sample` (or the model restored by
dlcli) gives on the same inputs. Plus the one-line errors."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FAST, InProcessCLI

TRAIN = [*FAST, "trainer.epochs=1"]
FORMATS = {"safetensors": "safetensors", "torchscript": "torchscript", "onnx": "onnx"}


def _train(factory: pytest.TempPathFactory, name: str, *args: str, files: dict | None = None) -> Path:
    """A run trained in-process in a directory of its own; returns its best checkpoint."""
    cwd = factory.mktemp(name)
    for rel, write in (files or {}).items():
        write(cwd / rel)
    dl = InProcessCLI(cwd)
    dl.ok("train", *args, *TRAIN, env={"DL_CACHE_DIR": str(cwd / "cache")})
    return dl.last_run() / "checkpoints" / "best.pt"


def _table(path: Path, n: int = 160, seed: int = 0) -> None:
    rng = random.Random(seed)
    rows = ["a,b,color,label"]
    for i in range(n):
        a, b, color = rng.gauss(5, 2), rng.gauss(-30, 10), rng.choice(["red", "green", "blue"])
        rows.append(f"{'' if i % 17 == 0 else f'{a:.3f}'},{b:.3f},{color},{'yes' if a + b / 10 > 2 else 'no'}")
    path.write_text("\n".join(rows) + "\n")


def _pictures(root: Path, n: int = 8) -> None:
    from PIL import Image  # test data only

    rng = random.Random(1)
    for cls, base in (("dark", 40), ("light", 200)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            color = tuple(min(255, max(0, base + rng.randint(-30, 30) + 20 * c)) for c in range(3))
            Image.new("RGB", (8, 8), color).save(root / cls / f"{i}.png")


@pytest.fixture(scope="module")
def csv_ckpt(tmp_path_factory) -> Path:
    return _train(tmp_path_factory, "csv", "model=mlp", "model.hidden_sizes=[8]", "dataset=csv",
                  "dataset.path=t.csv", "dataset.target=label", files={"t.csv": _table})


@pytest.fixture(scope="module")
def image_ckpt(tmp_path_factory) -> Path:
    return _train(tmp_path_factory, "images", "model=cnn", "model.channels=[4]", "model.hidden_sizes=[8]",
                  "dataset=image_folder", "dataset.path=pics", "dataset.image_size=8", files={"pics": _pictures})


@pytest.fixture(scope="module")
def lm_ckpt(tmp_path_factory) -> Path:
    return _train(tmp_path_factory, "lm", "model=lstm", "model.hidden_size=16", "model.embedding_size=16",
                  "model.tie_weights=true", "dataset=text", "dataset.path=a.txt", "dataset.block_size=16",
                  files={"a.txt": lambda p: p.write_text("the cat sat on the mat. " * 40)})


@pytest.fixture(scope="module")
def s2s_ckpt(tmp_path_factory) -> Path:
    return _train(tmp_path_factory, "s2s", "model=transformer", "model.d_model=16", "model.heads=2",
                  "model.layers=1", "model.ff_size=32", "dataset=reverse", "dataset.symbols=6", "dataset.max_len=6",
                  "dataset.n_train=400", "dataset.n_val=40", "dataset.n_test=40")


@pytest.fixture(scope="module")
def w2v_ckpt(tmp_path_factory) -> Path:
    words = "king queen man woman paris france dogs cats the a of and".split()
    text = lambda p: p.write_text("\n".join(" ".join(random.Random(i).choices(words, k=12)) for i in range(300)))
    return _train(tmp_path_factory, "w2v", "model=skipgram", "model.vector_size=8", "model.min_count=1",
                  "model.cpu_kernel=false", "dataset=corpus", "dataset.path=c.txt", "dataset.val_fraction=0.1",
                  "dataset.test_fraction=0.1", files={"c.txt": text})


def _export(dl: InProcessCLI, ckpt: Path, fmt: str, out: Path) -> str:
    dl.ok("export", str(ckpt), "--format", fmt, "--out", str(out))
    assert out.is_file() and Path(f"{out}.json").is_file()
    return str(out)


def _sample_json(dl: InProcessCLI, ckpt: Path, *args: str) -> list[dict]:
    return [json.loads(line) for line in dl.ok("sample", str(ckpt), *args, "--json").stdout.splitlines()
            if line.startswith("{")]


@pytest.mark.slow
def test_every_format_loads_without_dlcli_and_gives_what_dl_sample_gives(tmp_path, csv_ckpt, image_ckpt, lm_ckpt,
                                                                           s2s_ckpt, w2v_ckpt):
    from PIL import Image  # test data only

    dl = InProcessCLI(tmp_path)
    case: dict[str, dict] = {}
    for name, ckpt in (("csv", csv_ckpt), ("image", image_ckpt), ("lm", lm_ckpt), ("s2s", s2s_ckpt)):
        case[name] = {"ckpt": str(ckpt), "files": {f: _export(dl, ckpt, f, tmp_path / f"{name}.{ext}")
                                                   for f, ext in FORMATS.items()}}
    # CSV rows dl sample reads: a missing number, a colour never seen in training
    (tmp_path / "rows.csv").write_text("color,b,a,label\nred,-25.5,6.1,?\nblue,-40,,?\npurple,-31,4.2,?\n")
    case["csv"].update(rows=str(tmp_path / "rows.csv"),
                       want=_sample_json(dl, csv_ckpt, "--input", str(tmp_path / "rows.csv")))
    # pictures of another size, and a grayscale one: resized and converted as the sidecar says
    Image.new("RGB", (13, 9), (30, 60, 90)).save(tmp_path / "p1.png")
    Image.new("L", (8, 8), 220).save(tmp_path / "p2.png")
    pics = [str(tmp_path / "p1.png"), str(tmp_path / "p2.png")]
    case["image"].update(pictures=pics, want=_sample_json(dl, image_ckpt, "--input", ",".join(pics)))
    # the LM's logits for a fixed text, and the seq2seq's for a fixed pair, through dlcli's own restore
    from dlcli.commands.restore import restore

    r = restore(lm_ckpt, ["device=cpu"])
    ids = torch.tensor([[r.ckpt["meta"]["vocab"].index(c) for c in "the mat sat"]])
    with torch.no_grad():
        case["lm"].update(text="the mat sat", want=r.model(ids)[0].tolist())
    r = restore(s2s_ckpt, ["device=cpu"])
    vocab = r.ckpt["meta"]["src_vocab"]
    src, tgt_in = torch.tensor([[vocab.index(c) for c in "abcd"]]), torch.tensor([[1, *[vocab.index(c) for c in "dc"]]])
    with torch.no_grad():
        logits = r.model(src, tgt_in)[0].tolist()
    translation = dl.ok("sample", str(s2s_ckpt), "--input", "abcd").stdout.strip().splitlines()[-1]
    case["s2s"].update(source="abcd", target_in="dc", want=logits, translation=translation)
    dl.ok("export", str(w2v_ckpt), "--out", str(tmp_path / "vectors.txt"))  # the default format: word2vec
    case["w2v"] = {"ckpt": str(w2v_ckpt), "vectors": str(tmp_path / "vectors.txt"),
                   "files": {"safetensors": _export(dl, w2v_ckpt, "safetensors", tmp_path / "w2v.safetensors")}}
    (tmp_path / "cases.json").write_text(json.dumps(case))
    (tmp_path / "check.py").write_text(CHECK)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DL_DEBUG")}  # not even the test hooks
    res = subprocess.run([sys.executable, "-I", str(tmp_path / "check.py"), str(tmp_path / "cases.json")],
                         capture_output=True, text=True, env={**env, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.split() == ["csv", "image", "lm", "s2s", "w2v", "without", "dlcli"], res.stdout


# Run by a plain `python -I`: torch, safetensors, onnxruntime and Pillow, and the sidecars; never dlcli.
CHECK = r'''
import csv, json, sys
import numpy as np, onnxruntime as ort, torch
from PIL import Image
from safetensors.torch import load_file

cases = json.load(open(sys.argv[1]))


def sidecar(path):
    return json.load(open(path + ".json"))


def same_state(path, ckpt):
    """safetensors holds the checkpoint's state dict, key for key."""
    got, want = load_file(path), torch.load(ckpt, weights_only=True)["model"]
    assert set(got) == set(want), (sorted(got), sorted(want))
    assert all(torch.equal(got[k], want[k]) for k in want)
    return got


def run(files, *inputs):
    """The model's outputs by TorchScript and by ONNX Runtime (each a list of arrays)."""
    ts = torch.jit.load(files["torchscript"])
    with torch.no_grad():
        out = ts(*[torch.from_numpy(x) for x in inputs])
    session = ort.InferenceSession(files["onnx"], providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert names == [i["name"] for i in sidecar(files["onnx"])["inputs"]]
    ts_out = [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]
    return {"torchscript": ts_out, "onnx": session.run(None, dict(zip(names, inputs)))}


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def probabilities(rows, names):
    return np.array([[row[f"prob_{n}"] for n in names] for row in rows])


# --- mlp on a CSV: standardise and one-hot by hand
c = cases["csv"]
side = sidecar(c["files"]["onnx"])
prep, names = side["preprocessing"], side["postprocessing"]["class_names"]
x = []
for row in csv.DictReader(open(c["rows"]), delimiter=prep["delimiter"]):
    vec = []
    for col in prep["columns"]:
        v = row[col["name"]].strip()
        if col["type"] == "numeric":
            vec.append(0.0 if v.lower() in prep["missing"] else (float(v) - col["mean"]) / col["std"])
        else:
            vec += [1.0 if v == value else 0.0 for value in col["values"]]
    x.append(vec)
x = np.array(x, dtype=np.float32)
want = probabilities(c["want"], names)
for fmt, out in run(c["files"], x).items():
    assert np.allclose(softmax(out[0]), want, atol=2e-5), (fmt, softmax(out[0]), want)
w = same_state(c["files"]["safetensors"], c["ckpt"])  # Linear -> relu -> Linear, as the sidecar's config says
assert side["model"]["config"]["hidden_sizes"] == [8] and side["model"]["config"]["activation"] == "relu"
h = np.maximum(x @ w["body.0.weight"].numpy().T + w["body.0.bias"].numpy(), 0)
assert np.allclose(softmax(h @ w["head.weight"].numpy().T + w["head.bias"].numpy()), want, atol=2e-5)
print("csv")

# --- cnn on pictures: convert, resize, scale, normalise by hand
c = cases["image"]
side = sidecar(c["files"]["torchscript"])
p = side["preprocessing"]
images = []
for path in c["pictures"]:
    a = np.asarray(Image.open(path).convert(p["mode"]).resize((p["width"], p["height"])), dtype=np.float32) / 255
    a = (a if a.ndim == 3 else a[:, :, None]).transpose(2, 0, 1)
    mean, std = (np.array(p[k], dtype=np.float32).reshape(-1, 1, 1) for k in ("mean", "std"))
    images.append((a - mean) / std)
want = probabilities(c["want"], side["postprocessing"]["class_names"])
for fmt, out in run(c["files"], np.stack(images)).items():
    assert np.allclose(softmax(out[0]), want, atol=2e-5), (fmt, softmax(out[0]), want)
same_state(c["files"]["safetensors"], c["ckpt"])
print("image")

# --- LSTM LM with tied weights: characters -> ids by the sidecar's vocabulary
c = cases["lm"]
side = sidecar(c["files"]["onnx"])
vocab = side["preprocessing"]["vocab"]
ids = np.array([[vocab.index(ch) for ch in c["text"]]], dtype=np.int64)
for fmt, out in run(c["files"], ids).items():
    assert np.allclose(out[0][0], np.array(c["want"]), atol=1e-4), fmt
state = same_state(c["files"]["safetensors"], c["ckpt"])
assert sidecar(c["files"]["safetensors"])["shared_weights"] == [["embed.weight", "head.weight"]]
assert torch.equal(state["embed.weight"], state["head.weight"])
print("lm")

# --- transformer seq2seq: logits for a pair, and greedy decoding in this loop gives dl sample's translation
c = cases["s2s"]
side = sidecar(c["files"]["onnx"])
prep, post = side["preprocessing"], side["postprocessing"]
sp = post["specials"]
src = np.array([[prep["src_vocab"].index(ch) for ch in c["source"]]], dtype=np.int64)
tgt_in = np.array([[sp["<bos>"], *[prep["tgt_vocab"].index(ch) for ch in c["target_in"]]]], dtype=np.int64)
for fmt, out in run(c["files"], src, tgt_in).items():
    assert np.allclose(out[0][0], np.array(c["want"]), atol=1e-4), fmt
session = ort.InferenceSession(c["files"]["onnx"], providers=["CPUExecutionProvider"])
ts = torch.jit.load(c["files"]["torchscript"])
for fmt in ("onnx", "torchscript"):
    tokens = [sp["<bos>"]]
    while len(tokens) <= post["max_output_len"]:
        t = np.array([tokens], dtype=np.int64)
        logits = session.run(["logits"], {"src": src, "tgt_in": t})[0] if fmt == "onnx" else \
            ts(torch.from_numpy(src), torch.from_numpy(t))[0].detach().numpy()
        tokens.append(int(logits[0, -1].argmax()))
        if tokens[-1] == sp["<eos>"]:
            break
    text = "".join(prep["tgt_vocab"][i] for i in tokens[1:] if i not in (sp["<eos>"], sp["<pad>"], sp["<bos>"]))
    assert text == c["translation"], (fmt, text, c["translation"])
same_state(c["files"]["safetensors"], c["ckpt"])
print("s2s")

# --- skip-gram: safetensors rows are the word2vec file's vectors, in the sidecar's vocabulary order
c = cases["w2v"]
state = same_state(c["files"]["safetensors"], c["ckpt"])
lines = open(c["vectors"], encoding="utf-8").read().splitlines()[1:]
words = [line.split(" ", 1)[0] for line in lines]
assert words == sidecar(c["files"]["safetensors"])["preprocessing"]["vocab"]
vectors = np.array([[float(v) for v in line.split(" ")[1:]] for line in lines])
assert np.allclose(state["input.weight"].numpy(), vectors, rtol=1e-5, atol=1e-6)
print("w2v")

assert "dlcli" not in sys.modules and not any(m.startswith("dlcli.") for m in sys.modules)
print("without dlcli")
'''


def assert_one_line_error(res, expected: str) -> None:
    assert res.returncode == 2, f"exit {res.returncode}\nstdout:{res.stdout}\nstderr:{res.stderr}"
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], res.stderr


def test_export_errors_are_one_line_and_write_nothing(tmp_path, csv_ckpt, monkeypatch):
    dl = InProcessCLI(tmp_path)
    ckpt = str(csv_ckpt)
    assert_one_line_error(dl("export", ckpt, "--format", "pickle"),
                          "--format pickle: no such format; choose one of: onnx, safetensors, torchscript")
    assert_one_line_error(dl("export", ckpt, "--format", "word2vec"),
                          "the word2vec format holds word vectors, from cbow/skipgram checkpoints; this mlp checkpoint "
                          "exports as safetensors, torchscript or onnx")
    assert_one_line_error(dl("export", ckpt, "--binary"), "--binary is for --format word2vec")
    mine = tmp_path / "model.onnx"
    mine.write_text("my notes\n")
    assert_one_line_error(dl("export", ckpt, "--format", "onnx", "--out", str(mine)),
                          f"--out {mine}: the file exists; add --force")
    assert mine.read_text() == "my notes\n"
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the dlcli[onnx] extra were not installed
    assert_one_line_error(dl("export", ckpt, "--format", "onnx", "--out", str(mine), "--force"),
                          "--format onnx needs onnxruntime, which is not installed: pip install 'dlcli[onnx]'")
    assert mine.read_text() == "my notes\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no sidecar, no .part left
    assert not (csv_ckpt.parent.parent / "export").exists()


def test_a_loop_rnn_exports_its_weights_only(tmp_path_factory):
    ckpt = _train(tmp_path_factory, "loop", "model=rnn", "model.leak_alpha=0.5", "model.hidden_size=4",
                  "model.embedding_size=4", "dataset=adding", "dataset.n_samples=200")
    dl = InProcessCLI(ckpt.parent.parent)
    assert_one_line_error(dl("export", str(ckpt), "--format", "torchscript"),
                          "runs a Python loop over the time steps, which a trace would freeze at one sequence length; "
                          "this rnn checkpoint exports as safetensors")
    dl.ok("export", str(ckpt))  # safetensors, the default
    side = json.loads((ckpt.parent.parent / "export" / "model.safetensors.json").read_text())
    assert side["model"]["config"]["leak_alpha"] == 0.5 and side["inputs"][0]["shape"] == ["batch", "seq_len", 2]
    assert side["postprocessing"]["target_mean"] == [0.0] and side["preprocessing"]["type"] == "sequence"
