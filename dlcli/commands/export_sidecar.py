"""The JSON file beside an exported model (`<file>.json`): what the model is, what goes in and what comes out, and every
step dl applies around it (CSV standardisation and one-hot columns, image normalisation, vocabularies, regression
targets, how seq2seq decodes), so that `dl sample` can be reproduced without dlcli. The numbers come from the
checkpoint's meta, the same ones `dl sample` uses."""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from dlcli import __version__
from dlcli.base.targets import model_name
from dlcli.base.tokens import SPECIALS
from dlcli.commands.export_formats import Signature, kind_of
from dlcli.commands.restore import Restored
from dlcli.data.pairs import max_output_len
from dlcli.data.tabular import MISSING
from dlcli.models import count_params


def sidecar(r: Restored, fmt: str, file_name: str, facts: dict[str, Any], sig: Signature | None) -> dict[str, Any]:
    meta = r.ckpt["meta"]
    kind = kind_of(meta)
    out: dict[str, Any] = {
        "format": "dlcli.export", "version": 1, "dlcli": __version__, "file": file_name, "file_format": fmt, **facts,
        "model": {"family": model_name(r.cfg.model), "target": r.cfg.model.get("_target_"), "kind": kind,
                  "parameters": count_params(r.model), "config": OmegaConf.to_container(r.cfg.model, resolve=True)},
        "checkpoint": {"path": str(r.path.resolve()), "epoch": r.ckpt.get("epoch"), "step": r.ckpt.get("step")},
    }
    if fmt == "safetensors":
        out["load"] = ("the state dict of the model that model.config describes (dlcli: its build_model(model.config, "
                       "meta)); keys as model.state_dict() names them")
    if sig is not None:
        outputs = sig.outputs[:1] if fmt == "safetensors" and kind == "seq2seq" else sig.outputs  # forward's own
        out["inputs"] = [{"name": n, "dtype": sig.dtypes[n], "shape": sig.shapes[n]} for n in sig.inputs]
        out["outputs"] = [{"name": n, "dtype": sig.dtypes[n], "shape": sig.shapes[n]} for n in outputs]
    out["preprocessing"] = preprocessing(r)
    out["postprocessing"] = postprocessing(meta, kind)
    return out


def preprocessing(r: Restored) -> dict[str, Any]:
    meta = r.ckpt["meta"]
    kind = kind_of(meta)
    shape = meta.get("input_shape") or []
    if "columns" in (meta.get("preprocessing") or {}):
        return _csv(meta["preprocessing"], str(r.cfg.dataset.get("delimiter", ",")))
    if len(shape) == 3:
        return _image(meta)
    if kind == "seq2seq":
        return _pairs(meta)
    if kind == "embedding":
        return {"type": "words", "vocab": meta["vocab"], "lowercase": meta.get("lowercase", True),
                "steps": ["row i of input.weight is the vector of the word vocab[i] (output.weight: its vector as a "
                          "prediction target)", "lowercase: words were lower-cased before counting"]}
    if "vocab" in meta:
        return _tokens(meta, kind)
    if "input_size" in meta:
        return {"type": "sequence", "features": meta.get("features"), "input_size": meta["input_size"],
                "seq_len": meta.get("seq_len"),
                "steps": ["each step a vector of input_size raw values (no scaling), in the order of features"]}
    return {"type": "vector", "features": meta.get("features"), "shape": shape,
            "steps": ["the raw values, in the order of features (no scaling)"]}


def _csv(prep: dict, delimiter: str) -> dict[str, Any]:
    return {"type": "csv", "delimiter": delimiter, "columns": prep["columns"], "missing": sorted(MISSING),
            "steps": ["read the columns named in `columns`, in that order, by the header's names; cells stripped of "
                      "surrounding spaces",
                      "numeric column: (value - mean) / std; a missing cell (one of `missing`, any case) gives 0",
                      "category column: one 0/1 number per entry of `values`, in order; a value not among them (or "
                      "missing) gives all zeros",
                      "concatenate them: one float32 row per CSV row"]}


def _image(meta: dict) -> dict[str, Any]:
    channels, height, width = meta["input_shape"]
    return {"type": "image", "channels": channels, "height": height, "width": width,
            "mode": "L" if channels == 1 else "RGB", "mean": meta.get("pixel_mean", 0.0),
            "std": meta.get("pixel_std", 1.0), "layout": "NCHW float32",
            "steps": ["open with Pillow (JPEG: img.draft(mode, (width, height)) first; 16-bit grayscale: value >> 8)",
                      "img.convert(mode).resize((width, height)), Pillow's default resampling",
                      "pixel / 255, then (x - mean) / std per channel (mean, std: one number or one per channel)",
                      "float32 (channels, height, width), images stacked on a first (batch) axis"]}


def _specials(vocab: list[str]) -> dict[str, int]:
    return {t: i for i, t in enumerate(SPECIALS)} if list(vocab[:len(SPECIALS)]) == SPECIALS else {}


def _tokens(meta: dict, kind: str) -> dict[str, Any]:
    keys = ("vocab", "level", "lowercase", "punctuation", "unk", "unk_id", "pad_id", "max_len", "block_size",
            "seq_len")
    out: dict[str, Any] = {"type": "tokens", **{k: meta[k] for k in keys if k in meta},
                           "specials": _specials(meta["vocab"])}
    if kind == "lm":
        steps = ["tokens: level char: every character; level word: whitespace-separated words, each line break a "
                 "'\\n' token of its own",
                 "ids: a token's index in vocab; unknown tokens: unk's id (unk null: the model knows no others)",
                 "block_size: the context it was trained on; dl sample feeds it at most the last block_size tokens"]
    elif "pad_id" in meta:  # texts to classify
        steps = ["tokens as dl's corpus tokenizer makes them: lower-cased (lowercase), punctuation split off / "
                 "dropped / kept (punctuation); level char: the characters of that",
                 "ids: a token's index in vocab, unknown ones unk_id; the first max_len tokens of a text",
                 "texts of a batch right-padded with pad_id to one width"]
    else:
        steps = ["each step's symbol as its index in vocab"]
    out["steps"] = steps
    return out


def _pairs(meta: dict) -> dict[str, Any]:
    keys = ("src_vocab", "tgt_vocab", "src_level", "tgt_level", "max_src_len", "max_tgt_len")
    return {"type": "pairs", **{k: meta[k] for k in keys}, "specials": _specials(meta["src_vocab"]),
            "normalize": bool(meta.get("direction")),
            "steps": ["normalize (eng_fra): ASCII-fold accents, lower-case, split off . ! ? and drop other "
                      "characters that are not letters",
                      "source tokens: characters (src_level char) or whitespace-separated words (word)",
                      "src ids: each token's index in src_vocab, unknown ones <unk>; no <bos>/<eos> on the source; "
                      "rows right-padded with <pad>"]}


def postprocessing(meta: dict, kind: str) -> dict[str, Any]:
    if kind == "classify":
        return {"type": "classify", "class_names": meta["class_names"],
                "steps": ["softmax over the last axis: each class's probability (dl sample's prob_<class>)",
                          "the prediction: class_names[argmax]"]}
    if kind == "regress":
        n = int(meta.get("output_size", 1))
        return {"type": "regress", "targets": meta.get("targets"),
                "target_mean": meta.get("target_mean", [0.0] * n), "target_std": meta.get("target_std", [1.0] * n),
                "steps": ["prediction = output * target_std + target_mean, per output column"]}
    if kind == "tag":
        return {"type": "tag", "class_names": meta["class_names"], "steps": ["class_names[argmax] at each step"]}
    if kind == "lm":
        return {"type": "lm", "steps": [
            "logits[:, t] scores the token after position t: pick one (argmax, or sample after temperature / top-k / "
            "top-p as dl sample does), append it, run again",
            "text: vocab[id] of each token, joined (level char: nothing between; word: spaces)"]}
    if kind == "seq2seq":
        return {"type": "seq2seq", "max_output_len": max_output_len(meta), "specials": _specials(meta["tgt_vocab"]),
                "steps": ["decoding is a loop in your code: tgt_in = [[<bos>]]; logits = the first output of "
                          "model(src, tgt_in); next = argmax(logits[:, -1]); append it to tgt_in; stop at <eos> or "
                          "after max_output_len new tokens (dl sample: greedy like this, or beam search with --beam)",
                          "text: tgt_vocab[id] of the new tokens up to <eos>, <pad> and <bos> left out, joined "
                          "(tgt_level char: nothing between; word: spaces)"]}
    return {"type": kind}
