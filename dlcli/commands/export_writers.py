"""Writing a model in dl export's formats, each file checked right after it is written: read back (and run, on the
signature's two examples), it must give what the model itself gives, to 1e-4.

safetensors: the state dict. torchscript: torch.jit.trace of the eval-mode model (torch.jit.script when a trace does
not reproduce the model). onnx: torch.onnx.export's TorchScript-based exporter first (quick, and it handles the packed
sequences of dl's recurrent encoders), the dynamo exporter when that fails;
batch and sequence axes dynamic.
"""

from __future__ import annotations

import importlib
import io
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from dlcli.base.errors import UserError, debug
from dlcli.commands.export_formats import Signature

TOLERANCE = 1e-4
ONNX_LIMIT = 2 * 1024 ** 3  # protobuf's limit on one ONNX file (weights included)


def write_safetensors(model: nn.Module, path: Path) -> dict[str, Any]:
    """The state dict, key for key (load_state_dict takes it back as it is). safetensors refuses tensors that share
    memory, such as tied weights (an LM's embedding and output layer): each key gets its own copy, and the sidecar
    lists the keys that were one tensor, for a loader that wants to tie them again."""
    tensors: dict[str, torch.Tensor] = {}
    seen: dict[int, str] = {}
    shared: list[list[str]] = []
    for key, t in model.state_dict().items():
        t = t.detach().cpu()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen and t.numel():
            shared.append([seen[ptr], key])
            t = t.clone()
        seen.setdefault(ptr, key)
        tensors[key] = t.contiguous()  # channels-last convolution weights are stored in the standard layout
    save_file(tensors, str(path), metadata={"format": "pt"})
    back = load_file(str(path))
    if set(back) != set(tensors) or any(not torch.equal(back[k], tensors[k]) for k in tensors):
        raise UserError(f"{path}: the safetensors file did not read back as written (a full disk?)")
    return {"shared_weights": shared}


def write_torchscript(sig: Signature, path: Path, who: str) -> dict[str, Any]:
    failures = []
    for how in ("trace", "script"):
        try:
            with quiet(), torch.no_grad():
                graph = torch.jit.trace(sig.module, sig.example, check_trace=False) if how == "trace" \
                    else torch.jit.script(sig.module)
                torch.jit.save(graph, str(path))
                loaded = torch.jit.load(str(path))
                diff = mismatch(loaded, sig)
        except Exception as e:  # what does not trace or script fails in many ways (RuntimeError, TypeError, ...)
            failures.append(f"{how}: {first_line(e)}")
            continue
        if diff is None:
            return {"torchscript": how}
        failures.append(f"{how}: {_differ(diff)}")
    raise UserError(f"--format torchscript: {who} does not export to TorchScript ({'; '.join(failures)}); "
                    "--format safetensors carries any model")


def write_onnx(sig: Signature, path: Path, who: str) -> dict[str, Any]:
    onnx, ort = onnx_modules()
    size = sum(t.numel() * t.element_size() for t in sig.module.state_dict().values())
    if size > ONNX_LIMIT:
        raise UserError(f"--format onnx: one ONNX file holds at most 2 GB and these weights take "
                        f"{size / 1e9:.1f} GB; use --format safetensors")
    options = ort.SessionOptions()
    options.log_severity_level = 4  # a failed run raises (and says why in its message); no log lines besides
    failures = []
    for exporter in ("torchscript", "dynamo"):
        try:
            with quiet(), torch.no_grad():
                _export_onnx(sig, path, dynamo=exporter == "dynamo")
                session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                diff = mismatch(lambda *x: session.run(sig.outputs, {n: t.numpy() for n, t in zip(sig.inputs, x)}),
                                sig)
        except Exception as e:  # the exporters and onnxruntime raise their own many kinds
            failures.append(f"{exporter} exporter: {first_line(e)}")
            continue
        if diff is None:
            opset = max(o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx"))
            return {"onnx_exporter": exporter, "opset": opset}
        failures.append(f"{exporter} exporter: onnxruntime's {_differ(diff)}")
    raise UserError(f"--format onnx: {who} does not export to ONNX ({'; '.join(failures)}); --format safetensors "
                    "carries any model")


def _export_onnx(sig: Signature, path: Path, dynamo: bool) -> None:
    common = {"input_names": sig.inputs, "output_names": sig.outputs}
    if not dynamo:
        torch.onnx.export(sig.module, sig.example, str(path), dynamo=False, dynamic_axes=sig.axes, **common)
        return
    from torch.export import Dim  # only the dynamo exporter needs it (and torch.export is slow to import)

    shapes = tuple({d: Dim.AUTO for d in sig.axes[name]} for name in sig.inputs)
    torch.onnx.export(sig.module, sig.example, str(path), dynamo=True, dynamic_shapes=shapes, external_data=False,
                      **common)


def onnx_modules() -> tuple[Any, Any]:
    """onnx and onnxruntime, imported here: they are the optional dlcli[onnx] extra (with onnxscript, which
    torch.onnx's dynamo exporter imports)."""
    for name in ("onnx", "onnxruntime", "onnxscript"):
        try:
            importlib.import_module(name)
        except ImportError:
            raise UserError(f"--format onnx needs {name}, which is not installed: pip install 'dlcli[onnx]'") from None
    return sys.modules["onnx"], sys.modules["onnxruntime"]


def mismatch(run: Callable, sig: Signature) -> float | None:
    """None when `run` gives the model's outputs (to TOLERANCE) on both examples; else the largest difference."""
    worst, ok = 0.0, True
    for inputs, want in ((sig.example, sig.want), (sig.other, sig.want_other)):
        try:
            got = run(*inputs)
        except Exception as e:  # the exported graph fails on inputs it should take (onnxruntime raises its own)
            if inputs is sig.example:
                raise
            raise RuntimeError(f"it kept the example's sizes and fails on another batch size or length "
                               f"({first_line(e)})") from None
        got = got if isinstance(got, (tuple, list)) else (got,)
        if len(got) != len(want):
            return float("inf")
        for g, w in zip(got, want):
            g = torch.as_tensor(g)
            if g.shape != w.shape:
                return float("inf")
            worst = max(worst, float((g.float() - w.float()).abs().max()) if g.numel() else 0.0)
            ok = ok and torch.allclose(g.float(), w.float(), rtol=TOLERANCE, atol=TOLERANCE)
    return None if ok else worst


def _differ(diff: float) -> str:
    if diff == float("inf"):
        return "outputs are not shaped as the model's (on another batch size or length: it kept the example's)"
    return f"outputs differ from the model's by {diff:.2g}"


def first_line(e: BaseException) -> str:
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(e)).splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0][:160] if lines else ''}"


@contextmanager
def quiet() -> Iterator[None]:
    """The exporters talk: Python warnings, log lines, progress prints and C++ warnings written straight to file
    descriptors 1 and 2. A user asked for a file: they are dropped (DL_DEBUG=1 keeps them)."""
    if debug():
        yield
        return
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        if stream is not None:
            stream.flush()
    try:
        saved = os.dup(1), os.dup(2)
    except OSError:  # no such descriptors (an embedding host): Python's own streams only
        saved = None
    with tempfile.TemporaryFile() as sink, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if saved:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
        try:
            with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
                yield
        finally:
            for stream in (sys.__stdout__, sys.__stderr__):
                if stream is not None:
                    stream.flush()
            if saved:
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                os.close(saved[0])
                os.close(saved[1])
