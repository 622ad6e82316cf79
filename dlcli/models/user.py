"""The user's own nn.Module, named by `_target_` in a model YAML (as in lightning-hydra-template and torchtune):

    # myconf/model/poolnet.yaml
    _target_: mynets.PoolNet      # any importable callable that returns an nn.Module
    width: 16

It is called with the YAML's keys (but `_target_`, `name` and dl's own `clip_grad_norm`) plus the data's description
for each parameter its signature names (data_parameters; listed in the README, "Your own model and data"). The
current directory is importable, as with `python -m`.
"""

from __future__ import annotations

import inspect
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from dlcli.base.errors import UserError
from dlcli.base.targets import import_target
from dlcli.base.tokens import PAD

KINDS = ("classify", "regress", "tag", "lm")  # the task kinds whose forward contract a user model can meet
OWN_KEYS = ("_target_", "name", "clip_grad_norm")  # dl's keys in a model YAML, not the model's arguments


def data_parameters(meta: dict) -> dict[str, Any]:
    """The data's description under the names user models take."""
    shape = list(meta.get("input_shape") or [])
    out: dict[str, Any] = {"meta": meta, "pad_id": PAD}
    if len(shape) == 1:
        out["input_size"] = shape[0]
    elif len(shape) == 3:
        out["in_channels"], out["image_size"] = shape[0], shape[1] if shape[1] == shape[2] else tuple(shape[1:])
    elif "input_size" in meta:
        out["input_size"] = meta["input_size"]
    for key in ("num_classes", "output_size", "vocab_size", "seq_len"):
        if meta.get(key) is not None:
            out[key] = meta[key]
    return out


def build_user_model(cfg: DictConfig, meta: dict) -> nn.Module:
    target = str(cfg._target_)
    kind = meta.get("kind")
    if kind not in KINDS:
        raise UserError(f"model._target_={target}: a model of your own can learn {', '.join(KINDS)} tasks; this "
                        f"dataset is a {kind} task (use a built-in model for it: dl ls model)")
    fn = import_target(target, "model._target_")
    keys = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in OWN_KEYS}
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    data = {k: v for k, v in data_parameters(meta).items() if k in params or (takes_any and k != "meta")}
    missing = [n for n, p in params.items() if p.default is inspect.Parameter.empty and n not in {**keys, **data}
               and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
    if missing:
        raise UserError(f"model._target_={target}: nothing gives its parameter(s) {', '.join(missing)}; set them in "
                        f"the model YAML, or name one of the data's: {', '.join(sorted(data_parameters(meta)))}")
    try:
        model = fn(**{**data, **keys})
    except Exception as e:
        raise UserError(f"model._target_={target}: calling it failed: {type(e).__name__}: "
                        f"{(str(e).splitlines() or [''])[0][:160]}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"model._target_={target}: it returned a {type(model).__name__}, not a torch.nn.Module")
    return model
