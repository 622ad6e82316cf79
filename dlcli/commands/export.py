"""`dl export CKPT [--format F] [--out PATH]`: a checkpoint's model as a file other tools load, with a JSON sidecar
(`<PATH>.json`) holding the preprocessing that turns raw data into its inputs and its outputs into predictions.

Formats: word2vec (cbow/skipgram vectors, text or --binary; what gensim reads), safetensors (the state dict; any
model), torchscript and onnx (the eval-mode graph, batch and sequence axes dynamic; checked right after writing: it
must give the model's own outputs to 1e-4). Which formats fit which model: export_formats.py; writing each:
export_writers.py; the sidecar: export_sidecar.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from dlcli.base.console import make_console
from dlcli.base.errors import UserError
from dlcli.base.targets import model_name
from dlcli.commands.export_formats import (EXTENSIONS, Signature, check_format, default_format, kind_of, not_traced,
                                           signature)
from dlcli.commands.export_sidecar import sidecar
from dlcli.commands.export_writers import onnx_modules, write_onnx, write_safetensors, write_torchscript
from dlcli.commands.restore import Restored, restore
from dlcli.models.vectors_file import save_word2vec


def export_cli(path: str, overrides: list[str], binary: bool, out: str | None, force: bool = False,
               fmt: str | None = None) -> Path:
    """The files in the run's own default place (vectors.txt/.bin, export/model.*) are dl's to rewrite; any other
    existing file only with --force. Nothing is replaced until the new file has been checked."""
    if not any(o.startswith("device=") for o in overrides):
        overrides = ["device=cpu", *overrides]  # exported files hold CPU tensors, whatever the run trained on
    r = restore(path, overrides)
    fmt = fmt or default_format(r)
    check_format(fmt, r)
    if fmt == "word2vec":
        return _word2vec(r, binary, out, force)
    if binary:
        raise UserError(f"--binary is for --format word2vec (the word vectors' binary format), not --format {fmt}")
    if fmt == "onnx":
        onnx_modules()  # the optional extra, before any work
    default = r.path.parent.parent / "export" / f"model{EXTENSIONS[fmt]}"
    dest = _destination(out, default, force)
    side = dest.with_name(dest.name + ".json")
    if side.exists() and not force and dest.resolve() != default.resolve():
        raise UserError(f"--out {out}: {side} (its sidecar) exists; add --force to replace it, or name another file "
                        "(nothing was written)")
    made = not dest.parent.exists()
    parts = [p.with_name(f".{p.name}.part") for p in (dest, side)]
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        facts, sig = _write(fmt, r, parts[0])
        parts[1].write_text(json.dumps(sidecar(r, fmt, dest.name, facts, sig), indent=1) + "\n", encoding="utf-8")
        os.replace(parts[0], dest)
        os.replace(parts[1], side)
    except OSError as e:
        raise UserError(f"--out {dest}: cannot write it ({e.strerror}); name a file in a directory you can "
                        "write") from None
    finally:
        for p in parts:
            p.unlink(missing_ok=True)
        if made and dest.parent.is_dir() and not any(dest.parent.iterdir()):  # no empty folder left by a failure
            dest.parent.rmdir()
    how = {"trace": " (traced)", "script": " (scripted)", "torchscript": " (TorchScript-based exporter)",
           "dynamo": " (dynamo exporter)"}.get(facts.get("torchscript") or facts.get("onnx_exporter"), "")
    make_console().print(f"wrote {model_name(r.cfg.model)} as {fmt}{how} to {dest}, preprocessing in {side.name}")
    return dest


def _write(fmt: str, r: Restored, part: Path) -> tuple[dict, Signature | None]:
    if fmt == "safetensors":
        facts = write_safetensors(r.model, part)
        try:  # what goes in and out, for the sidecar; the weights alone need no example to run
            sig = signature(r) if kind_of(r.ckpt["meta"]) != "embedding" else None
        except UserError:
            sig = None
        return facts, sig
    sig = signature(r)
    write = write_torchscript if fmt == "torchscript" else write_onnx
    return write(sig, part, not_traced(r)), sig


def _destination(out: str | None, default: Path, force: bool) -> Path:
    dest = Path(out).expanduser() if out else default
    if dest.is_dir():
        raise UserError(f"--out {out}: that is a directory; name a file, e.g. --out {dest / default.name}")
    if dest.exists() and not force and dest.resolve() != default.resolve():
        raise UserError(f"--out {out}: the file exists; add --force to replace it, or name another file "
                        "(nothing was written)")
    return dest


def _word2vec(r: Restored, binary: bool, out: str | None, force: bool) -> Path:
    """The word vectors in word2vec's text or binary format (gensim's KeyedVectors.load_word2vec_format)."""
    dest = _destination(out, r.path.parent.parent / ("vectors.bin" if binary else "vectors.txt"), force)
    try:
        save_word2vec(dest, r.ckpt["meta"]["vocab"], r.model.vectors(), binary=binary)
    except OSError as e:
        raise UserError(f"--out {dest}: cannot write it ({e.strerror}); name a file in a directory you can "
                        "write") from None
    make_console().print(f"wrote {len(r.ckpt['meta']['vocab'])} vectors to {dest}")
    return dest
