"""How a model family declares itself, once, in its own file: FAMILIES = {name: Family(build, fits, about)}."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn


@dataclass(frozen=True)
class Family:
    build: Callable[[Any, dict], nn.Module]  # build(cfg.model, task.meta)
    fits: frozenset[tuple[str, str]]         # the (task kind, input) pairs it can learn, as dataset YAMLs name them
    about: str                               # one line for dl train --help and dl ls

    def __init__(self, build: Callable[[Any, dict], nn.Module], fits: Iterable[tuple[str, str]], about: str):
        object.__setattr__(self, "build", build)
        object.__setattr__(self, "fits", frozenset(fits))
        object.__setattr__(self, "about", about)
