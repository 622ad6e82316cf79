"""What the shipped conf/ holds, read from its files alone (no Hydra, no torch): the groups, their options, and each
option's one line (the first comment of its YAML). dl train's help, shell completion, dl ls and dl cp use it."""

from __future__ import annotations

import functools
from importlib.resources import files
from importlib.resources.abc import Traversable

HIDDEN = ("hydra",)  # Hydra's own launcher configs: not a choice users make through dl's groups
SWEEP_GROUPS = ("experiment", "hparams_search")  # lessons and searches: -m +experiment=NAME
ADDED_GROUPS = (*SWEEP_GROUPS, "debug")  # groups without a default: chosen with +group=OPTION


def conf_root() -> Traversable:
    return files("dlcli.conf")


def group_options() -> dict[str, list[str]]:
    """The shipped config groups and their options, from conf/'s folders."""
    return {group.name: sorted(f.name[:-5] for f in group.iterdir() if f.name.endswith(".yaml"))
            for group in sorted(conf_root().iterdir(), key=lambda g: g.name)
            if group.is_dir() and not group.name.startswith(("_", ".")) and group.name not in HIDDEN}


def option_file(group: str, option: str) -> Traversable:
    return conf_root().joinpath(group, f"{option}.yaml")


def about(group: str, option: str) -> str:
    """The option's one line: the first comment of its YAML (on a line of its own, or after `name:`)."""
    for line in option_file(group, option).read_text(encoding="utf-8").splitlines():
        text = line.split("#", 1)[1].strip() if "#" in line else ""
        if text and not text.startswith("@package"):
            first = text.split(". ")[0].rstrip(".")
            return first if len(first) <= 110 else first[:107] + "..."
    return ""


@functools.cache
def dataset_shapes() -> dict[str, tuple[str, str]]:
    """Each shipped dataset's (kind, input), as its conf/dataset/NAME.yaml declares them (read once a process)."""
    from omegaconf import OmegaConf  # lazy: dl --help lists conf/ without it

    shapes = {}
    for option in group_options()["dataset"]:
        d = OmegaConf.create(option_file("dataset", option).read_text(encoding="utf-8"))
        shapes[str(d.name)] = (str(d.get("kind")), str(d.get("input")))
    return shapes
