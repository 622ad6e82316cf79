"""A model or dataset YAML that names `_target_` (the user's own code) and the name such a config goes by;
torch-free, as dl train reads it before --help/--cfg have answered."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from omegaconf import DictConfig

from dlcli.base.errors import UserError


def is_user_model(cfg: Any) -> bool:
    return isinstance(cfg, DictConfig) and "_target_" in cfg


is_user_data = is_user_model  # the same test: a dataset YAML with _target_


def config_name(cfg: Any) -> str:
    """A model's or dataset's name: `name` if the YAML gives one, else its target's last part in lower case
    (mynets.PoolNet: poolnet)."""
    if cfg.get("name"):
        return str(cfg.name)
    return str(cfg.get("_target_", "?")).rsplit(".", 1)[-1].lower()


model_name = dataset_name = config_name


def import_target(target: str, what: str) -> Any:
    """`package.module.Name` -> the object, the current directory first on the path as `python -m` has it; `what`
    names the key in messages (model._target_)."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module_name, _, attr = target.rpartition(".")
    if not module_name:
        raise UserError(f"{what}={target}: name it as module.Callable, e.g. mynets.PoolNet")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UserError(f"{what}={target}: cannot import {module_name} ({e}); put {module_name}.py in the "
                        "directory you run dl from, or on PYTHONPATH") from None
    except Exception as e:  # the user's module raised while importing
        raise UserError(f"{what}={target}: importing {module_name} failed: {type(e).__name__}: "
                        f"{(str(e).splitlines() or [''])[0][:160]}") from None
    if not hasattr(module, attr):
        raise UserError(f"{what}={target}: {module_name} has no {attr}")
    found = getattr(module, attr)
    if not callable(found):
        raise UserError(f"{what}={target}: that is a {type(found).__name__}, not a class or function")
    return found
