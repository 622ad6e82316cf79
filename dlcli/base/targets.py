"""A model YAML that names `_target_` (the user's own nn.Module) and the name such a model goes by; torch-free, as
dl train reads it before --help/--cfg have answered."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig


def is_user_model(cfg: Any) -> bool:
    return isinstance(cfg, DictConfig) and "_target_" in cfg


def model_name(cfg: Any) -> str:
    """A model's name: `name` if the YAML gives one, else the target's last part in lower case (mynets.PoolNet:
    poolnet)."""
    if cfg.get("name"):
        return str(cfg.name)
    return str(cfg.get("_target_", "model")).rsplit(".", 1)[-1].lower()
