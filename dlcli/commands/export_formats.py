"""Which formats `dl export` can write a checkpoint in (and why not), and what its model takes and gives when it
runs outside dlcli: named inputs, example values built from the checkpoint's meta alone, the axes that may vary.

The example is the model's own kind of input: float features (N, *input_shape), token ids (N, T), real-valued steps
(N, T, input_size), or (src, tgt_in) for seq2seq. A second example of another batch size (and length, when the model
takes any) checks that an exported graph did not freeze the shapes it was traced with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dlcli.base.errors import UserError, choices
from dlcli.base.targets import is_user_model, model_name
from dlcli.base.tokens import BOS, PAD
from dlcli.commands.restore import Restored
from dlcli.models.recurrent import LoopRNN

FORMATS = ("word2vec", "safetensors", "torchscript", "onnx")
EXTENSIONS = {"safetensors": ".safetensors", "torchscript": ".torchscript", "onnx": ".onnx"}
LOOP = ("the leaky/echo-state RNN (model.leak_alpha, model.echo_state) runs a Python loop over the time steps, which "
        "a trace would freeze at one sequence length")
VECTORS = "cbow/skipgram checkpoints are word vectors (a lookup table with nothing to run)"


def kind_of(meta: dict) -> str:
    return meta.get("kind") or ("classify" if "num_classes" in meta else "regress")


def default_format(r: Restored) -> str:
    return "word2vec" if kind_of(r.ckpt["meta"]) == "embedding" else "safetensors"


def refusals(r: Restored) -> dict[str, str]:
    """format -> why this checkpoint cannot be written in it; the formats it can take are absent."""
    if kind_of(r.ckpt["meta"]) == "embedding":
        return {"torchscript": VECTORS, "onnx": VECTORS}
    out = {"word2vec": "the word2vec format holds word vectors, from cbow/skipgram checkpoints"}
    if any(isinstance(m, LoopRNN) for m in r.model.modules()):
        out.update(torchscript=LOOP, onnx=LOOP)
    return out


def check_format(fmt: str, r: Restored) -> None:
    """One line naming the formats this checkpoint takes when `fmt` is not one of them, and why."""
    refused = refusals(r)
    valid = [f for f in FORMATS if f not in refused]
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: no such format{choices(fmt, valid)} (for this "
                        f"{model_name(r.cfg.model)} checkpoint)")
    if fmt in refused:
        either = " or ".join([", ".join(valid[:-1]), valid[-1]] if len(valid) > 1 else valid)
        raise UserError(f"--format {fmt}: {refused[fmt]}; this {model_name(r.cfg.model)} checkpoint exports as "
                        f"{either}")


class Seq2SeqForward(nn.Module):
    """forward(src, tgt_in) -> (logits, encoder_states): teacher-forced decoding of a whole target prefix, through
    the decoding API both seq2seq families share (encode, decode_step). Decoding a translation token by token is a
    loop that stays in the user's code. encoder_states is an output of its own because ONNX's export of packed
    sequences breaks when nothing reads the encoder's outputs (the fixed-context seq2seq reads only its last state)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, src: Tensor, tgt_in: Tensor) -> tuple[Tensor, Tensor]:
        memory = self.model.encode(src)
        logits = self.model.decode_step(tgt_in, memory)[0]
        states = memory.states if hasattr(memory, "states") else memory.outputs  # transformer | recurrent
        return logits, states


@dataclass
class Signature:
    """What an exported graph takes and gives."""

    module: nn.Module                  # what is traced: the model, or a wrapper around it
    inputs: list[str]                  # input names, in call order
    example: tuple[Tensor, ...]        # traced with this
    other: tuple[Tensor, ...]          # and checked on this: another batch size (and length, where allowed)
    want: tuple[Tensor, ...]           # the model's own outputs for example
    want_other: tuple[Tensor, ...]     # ... and for other
    axes: dict[str, dict[int, str]]    # name -> {dim: axis name} of the axes that may vary, outputs included
    outputs: list[str]
    shapes: dict[str, list]            # name -> shape, a name for each axis that varies
    dtypes: dict[str, str]


def _inputs(meta: dict, n: int, length: int, src_length: int, seed: int) -> tuple[Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    if "input_shape" in meta and "pad_id" not in meta:
        return (torch.randn(n, *meta["input_shape"], generator=gen),)
    if kind_of(meta) == "seq2seq":
        src = torch.randint(4, int(meta["src_vocab_size"]), (n, src_length), generator=gen)
        src[0, max(src_length - 2, 1):] = PAD  # a shorter source: the masks and packing of padded rows run too
        tgt = torch.randint(4, int(meta["tgt_vocab_size"]), (n, length), generator=gen)
        tgt[:, 0] = BOS
        return src, tgt
    if "vocab_size" in meta:
        ids = torch.randint(0, int(meta["vocab_size"]), (n, length), generator=gen)
        if "pad_id" in meta:  # right-padded texts: no pad inside a text, a shorter first row
            ids[ids == meta["pad_id"]] = meta["pad_id"] + 1
            ids[0, max(length - 2, 1):] = meta["pad_id"]
        return (ids,)
    return (torch.randn(n, length, int(meta["input_size"]), generator=gen),)


def _lengths(meta: dict) -> tuple[int, int]:
    """The example's target (or only) sequence length and source length."""
    length = meta.get("seq_len") or meta.get("block_size") or meta.get("max_len") or meta.get("max_tgt_len") or 8
    return min(int(length), 32), min(int(meta.get("max_src_len") or 8), 32)


def _another(length: int, delta: int) -> int:
    return length - delta if length - delta >= 2 else length + delta


def _run(module: nn.Module, inputs: tuple[Tensor, ...]) -> tuple:
    with torch.no_grad():
        out = module(*inputs)
    return out if isinstance(out, tuple) else (out,)


def signature(r: Restored) -> Signature:
    """The model's inputs and outputs, with two examples. Sequences vary in length when the model runs on another
    length (built-in sequence models do; a user's model may fix it): else only the batch varies."""
    meta = r.ckpt["meta"]
    kind = kind_of(meta)
    module = Seq2SeqForward(r.model).eval() if kind == "seq2seq" else r.model
    names = ["src", "tgt_in"] if kind == "seq2seq" else ["input"]
    length, src_length = _lengths(meta)
    example = _inputs(meta, 2, length, src_length, seed=1)
    try:
        got = _run(module, example)
    except Exception as e:  # a user's model that wants other inputs than its data's description gives
        raise UserError(f"{not_traced(r)}: it does not run on an input shaped like its data ({type(e).__name__}: "
                        f"{(str(e).splitlines() or [''])[0][:120]}); only --format safetensors can carry it") from None
    if not all(isinstance(t, Tensor) for t in got):
        raise UserError(f"{not_traced(r)}: its forward returns {type(got[0]).__name__}, not tensors; only --format "
                        "safetensors can carry it")
    sequence = [t.dtype == torch.long or (t.dim() == 3 and "input_shape" not in meta) for t in example]
    other = _inputs(meta, 3, _another(length, 3), _another(src_length, 2), seed=2)
    try:
        got_other = _run(module, other)
    except Exception:  # the model wants the training length: only the batch varies
        other = _inputs(meta, 3, length, src_length, seed=2)
        sequence = [False] * len(example)
        got_other = _run(module, other)
    outputs = ["logits", "encoder_states"] if kind == "seq2seq" else ["output" if kind == "regress" else "logits"]
    outputs = (outputs + [f"output_{i}" for i in range(len(outputs), len(got))])[:len(got)]
    axes: dict[str, dict[int, str]] = {}
    sizes: dict[tuple[int, int], str] = {}
    for name, t, t2, seq in zip(names, example, other, sequence):
        axes[name] = {0: "batch", **({1: {"src": "src_len", "tgt_in": "tgt_len"}.get(name, "seq_len")} if seq else {})}
        sizes.update({(t.shape[d], t2.shape[d]): axis for d, axis in axes[name].items()})
    for name, t, t2 in zip(outputs, got, got_other):  # an output axis that varies is named after the input's
        axes[name] = {d: sizes.get((a, b), f"{name}_dim{d}") for d, (a, b) in enumerate(zip(t.shape, t2.shape))
                      if a != b}
    shapes = {name: [axes[name].get(d, s) for d, s in enumerate(t.shape)]
              for name, t in zip(names + outputs, example + got)}
    dtypes = {name: str(t.dtype).removeprefix("torch.") for name, t in zip(names + outputs, example + got)}
    return Signature(module, names, example, other, got, got_other, axes, outputs, shapes, dtypes)


def not_traced(r: Restored) -> str:
    """The model, named for an error about exporting its graph: a user's by its _target_."""
    if is_user_model(r.cfg.model):
        return f"model._target_={r.cfg.model._target_}"
    return f"model={model_name(r.cfg.model)}"
