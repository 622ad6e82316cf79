"""A checkpoint brought back to life: its stored config (with key=value overrides, checked against the schema), the
model with its weights, the task rebuilt from the config alone. What `dl eval`, `dl sample` and `dl export` start
from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dlcli.base.errors import UserError
from dlcli.base.targets import dataset_name, model_name
from dlcli.base.task import Task
from dlcli.config.schema import check_schema
from dlcli.data import build_task
from dlcli.engine.checkpoint import config_of, load_checkpoint, resolve_path
from dlcli.engine.runtime import Runtime, configure_backends, resolve_device, resolve_precision
from dlcli.models import build_model


@dataclass
class Restored:
    path: Path
    ckpt: dict
    cfg: DictConfig
    model: torch.nn.Module
    runtime: Runtime

    @property
    def title(self) -> str:
        """'mlp on spirals': what the tables of dl sample are about."""
        return f"{model_name(self.cfg.model)} on {dataset_name(self.cfg.dataset)}"


def stored_config(ckpt: dict, overrides: list[str]) -> DictConfig:
    """The checkpoint's config with key=value overrides applied; `device=cpu` picks a device by name."""
    cfg = config_of(ckpt)
    for item in overrides:
        key, _, value = item.partition("=")
        if not key or not _:
            raise UserError(f"{item}: overrides are key=value, e.g. device=cpu or dataset.path=new.csv")
        if key == "device":
            cfg.device = {"name": value}
            continue
        if OmegaConf.select(cfg, key, default="__absent__") == "__absent__":
            raise UserError(f"{item}: the checkpoint's config has no key '{key}' (keys: "
                            f"{', '.join(sorted(k for k in cfg.keys()))}, e.g. dataset.path, trainer.eval_batch_size)")
        OmegaConf.update(cfg, key, OmegaConf.select(OmegaConf.from_dotlist([item]), key), merge=False)
    check_schema(cfg)  # the overrides, and a stored config changed by hand: the same ranges as dl train's
    return cfg


def restore(path: str | Path, overrides: list[str]) -> Restored:
    """Checkpoint -> config + model with its weights, on the requested device, in eval mode."""
    p = resolve_path(path)
    ckpt = load_checkpoint(p)
    cfg = stored_config(ckpt, overrides)
    device = resolve_device(cfg.device)
    runtime = Runtime(device, resolve_precision(cfg.trainer.precision, device))
    configure_backends(device, bool(cfg.trainer.get("deterministic", False)))
    try:
        model = build_model(cfg.model, ckpt["meta"])
    except UserError as e:  # the model's own line (a _target_ that does not import from here, a key missing...)
        raise UserError(f"{p}: {e}") from None
    except (OmegaConfBaseException, KeyError, TypeError, ValueError) as e:  # a stored config edited by hand
        raise UserError(f"{p}: its stored config does not build a {model_name(cfg.model)} "
                        f"({str(e).splitlines()[0][:160]}); it was changed since dl train wrote it") from None
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise UserError(f"{p}: the weights do not fit a {model_name(cfg.model)} built from its own config "
                        f"({str(e).splitlines()[0][:100]})") from None
    return Restored(p, ckpt, cfg, model.to(device).eval(), runtime)


def restore_task(r: Restored) -> Task:
    task = build_task(r.cfg.dataset, r.cfg.loss, r.runtime.device, stored_meta=r.ckpt["meta"])
    want, got = r.ckpt["meta"].get("input_shape"), task.meta.get("input_shape")
    if want != got or task.meta.get("num_classes") != r.ckpt["meta"].get("num_classes"):
        raise UserError(f"{r.path}: the data ({got}, {task.meta.get('num_classes')} classes) does not match what "
                        f"the model was trained on ({want}, {r.ckpt['meta'].get('num_classes')} classes)")
    return task


def test_examples(r: Restored, num: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """`num` test examples drawn with `seed`: inputs, targets and their labels ("test #i")."""
    if num < 1:
        raise UserError(f"--num-samples {num}: show at least 1 example")
    task = restore_task(r)
    n = task.size("test")
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:min(num, n)].to(task.device)
    x, y = task.rows("test", idx)
    return x, y, [f"test #{i}" for i in idx.tolist()]
