"""Dotted keys of a composed config: does one exist, and every leaf (for 'did you mean')."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, ListConfig


def has_key(cfg: Any, key: str) -> bool:
    """Whether a dotted key exists (a mandatory ??? value counts as existing)."""
    node = cfg
    for part in key.split("."):
        if isinstance(node, DictConfig) and part in node.keys():
            node = node._get_node(part)
        elif isinstance(node, ListConfig) and part.isdigit() and int(part) < len(node):
            node = node._get_node(int(part))
        else:
            return False
    return True


def leaf_keys(cfg: Any, prefix: str = "") -> list[str]:
    out = []
    if isinstance(cfg, DictConfig):
        for k in cfg.keys():
            out += leaf_keys(cfg._get_node(k), f"{prefix}{k}.")
    else:
        out.append(prefix[:-1])
    return out
