"""Sweeps before they run: the sweeper's own params, Optuna's search-space syntax, and the checks that make a bad
sweep fail at once (before any job) instead of in its first job, or, worse, in its last.

A sweep's jobs come from two places, as in Hydra's sweepers: `hydra.sweeper.params` in the config (an experiment or
hparams_search file puts its comparison there) and the command line (which wins for the same key). The basic sweeper
runs the cartesian product of choices; Optuna samples from choice(...), range(...) and interval(...), so we check the
end points of each interval together with every choice.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from hydra import compose
from hydra.errors import HydraException, OverrideParseException
from omegaconf import DictConfig, OmegaConf

from dlcli.base.errors import UserError
from dlcli.config.keys import has_key
from dlcli.config.listing import ADDED_GROUPS, SWEEP_GROUPS

# Hydra plugins that `hydra/<group>=<name>` needs, and the extra that installs each.
PLUGINS = {("sweeper", "optuna"): ("hydra-optuna-sweeper", "optuna"),
           ("launcher", "joblib"): ("hydra-joblib-launcher", "joblib")}
# Groups whose files define a sweep: a single run of them without -m would quietly run one job of it.
MAX_CHECKED = 256  # cartesian products larger than this are checked one value at a time


@dataclass
class SweepPlan:
    """What compose_jobs learns about a sweep beyond its jobs: the base config Hydra composes before it sweeps
    (with its hydra node), the command line's overrides, and those merged with hydra.sweeper.params."""

    base: DictConfig
    command_line: list[Any]
    merged: list[Any]

    @property
    def sweeper(self) -> Any:
        return self.base.hydra.sweeper


def composition_hint(error: str) -> str | None:
    """A clearer line for a composition error caused by a Hydra plugin that is not installed: 'pip install ...'."""
    for (group, name), (package, extra) in PLUGINS.items():
        if f"hydra/{group}/{name}" in error or f"hydra/{group}={name}" in error:
            return (f"hydra/{group}={name} needs Hydra's {name} {group} plugin: pip install 'dlcli[{extra}]' "
                    f"(that is {package})")
    auto = re.search(r"Could not find 'dataset/auto/([^']+)'", error)
    if auto:  # a model of the user's own: its default dataset is not declared
        m = auto[1]
        return (f"model={m} has no default dataset: name one (dataset=NAME, see dl ls dataset), or give it one in "
                f"your config dir as dataset/auto/{m}.yaml holding: defaults: [/dataset/NAME@_here_]")
    return None


def base_config(overrides: list[str], parsed: list[Any], groups: set[str], config_name: str) -> DictConfig:
    """The sweep's base config with Hydra's node (hydra.sweeper), as the command line's groups compose it (sweeps
    left out: they are the jobs, not the base; plain keys too: the jobs' own composition names a bad one)."""
    fixed = [o.input_line for o in parsed if not o.is_sweep_override() and (
        o.key_or_group in groups or o.key_or_group.startswith("hydra"))]
    fixed += [o for o in overrides if o.startswith("hydra.") and not o.startswith("hydra.sweeper.params")]
    try:
        return compose(config_name, overrides=fixed, return_hydra_config=True)
    except HydraException as e:
        raise UserError(composition_hint(str(e)) or str(e).strip().splitlines()[0]) from None


def with_sweeper_params(overrides: list[str], parsed: list[Any], parser: Any, multirun: bool,
                        groups: set[str], config_name: str = "config") -> tuple[list, SweepPlan | None]:
    """The overrides every job is made of: hydra.sweeper.params first, then the command line (the same key: the
    command line wins, as in Hydra's sweepers). Returns (parsed overrides, the sweep's plan or None)."""
    for o in parsed:
        if o.key_or_group in ADDED_GROUPS and not o.input_line.startswith(("+", "~")):
            sweep = "-m " if o.key_or_group in SWEEP_GROUPS else ""
            raise UserError(f"{o.input_line}: {o.key_or_group} is not in the default config, so it is added with "
                            f"a +: dl train {sweep}+{o.input_line}")
    if not multirun and not any(o.key_or_group in SWEEP_GROUPS for o in parsed):
        return parsed, None
    base = base_config(overrides, parsed, groups, config_name)
    params = [f"{k}={v}" for k, v in (base.hydra.sweeper.get("params") or {}).items()]
    if not params:
        return parsed, SweepPlan(base, parsed, parsed)

    try:
        from_config = parser.parse_overrides(params)
    except OverrideParseException as e:
        raise UserError(f"hydra.sweeper.params: cannot read {str(e).splitlines()[0]}") from None
    given = {o.get_key_element() for o in parsed}
    if not multirun:
        missing = [o.input_line for o in from_config if o.get_key_element() not in given]
        if missing:
            chosen = " ".join(o.input_line for o in parsed if o.key_or_group in SWEEP_GROUPS)
            raise UserError(f"{chosen} compares several runs ({', '.join(missing)}): add -m, as in "
                            f"dl train -m {chosen}; or fix those keys on the command line for one run of it")
        return parsed, SweepPlan(base, parsed, parsed)
    merged = [o for o in from_config if o.get_key_element() not in given] + parsed
    return merged, SweepPlan(base, parsed, merged)


def sweep_values(override: Any) -> list[str]:
    """The values of an override as strings: every choice or range value; an interval's two ends."""
    if override.is_interval_sweep():
        value = override.value()
        return [str(value.start), str(value.end)]
    if override.is_sweep_override():
        return [str(v) for v in override.sweep_string_iterator()]
    return [override.get_value_element_as_str()]


def job_lists(parsed: list[Any], plan: SweepPlan | None) -> list[list[str]]:
    """The jobs to compose before Hydra runs: the basic sweeper's own list; for a sampling sweeper (Optuna), the
    combinations of every choice and each interval's ends (one value at a time past MAX_CHECKED of them)."""
    # Hydra's own cartesian expansion (no public API for it)
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    target = str(plan.sweeper.get("_target_", "")) if plan is not None else ""
    if not target or target.endswith("BasicSweeper"):
        try:
            return BasicSweeper.split_arguments(parsed, None)[0]
        except HydraException:
            kinds = {o.value_type.name.split("_")[0].lower() for o in parsed if o.is_sweep_override()
                     and not o.is_discrete_sweep()}
            raise UserError(f"{'/'.join(sorted(kinds))}(...) is a search space, not a list of runs: it needs a "
                            "sampling sweeper, e.g. hydra/sweeper=optuna (pip install 'dlcli[optuna]'), or list "
                            "the values: key=a,b,c") from None
    keys = list(dict.fromkeys(o.get_key_element() for o in parsed))
    values = {o.get_key_element(): [f"{o.get_key_element()}={v}" for v in sweep_values(o)] for o in parsed}
    lists = [values[k] for k in keys]
    size = 1
    for v in lists:
        size *= len(v)
    if size <= MAX_CHECKED:
        return [list(job) for job in itertools.product(*lists)]
    first = [v[0] for v in lists]
    return [first[:i] + [value] + first[i + 1:] for i, v in enumerate(lists) for value in v]


def check_sweep(configs: list[DictConfig], plan: SweepPlan | None) -> None:
    """What no single job's config shows (every job composed fine): a fixed value the sweep's base config lacks,
    Optuna's direction against trainer.mode, and a trainer.monitor that the task never logs (found by one tiny
    batch per distinct dataset + model, as a run does before it trains)."""
    if plan is not None:
        _check_base(plan)
        _check_direction(configs, plan.sweeper)
        _check_storage(plan.sweeper)
    checked: set[str] = set()
    for cfg in configs:
        monitor = str(cfg.trainer.monitor)
        if "/" not in monitor or monitor.split("/", 1)[1] == "loss":  # every task logs its loss
            continue
        key = OmegaConf.to_yaml(OmegaConf.masked_copy(cfg, ["dataset", "model", "loss"])) + monitor
        if key in checked:
            continue
        checked.add(key)
        _check_monitor(cfg)


def _check_base(plan: SweepPlan) -> None:
    """Hydra sets the command line's fixed values on the sweep's base config, with every swept group at its
    default, before it sweeps: `-m model=cbow,skipgram model.vector_size=16` fails there (mlp, the default model,
    has no vector_size) although every job has the key. Say so, and how to give it to each job instead."""
    base = plan.base
    choices = base.hydra.runtime.choices
    swept = [o for o in plan.merged if o.is_sweep_override() and o.key_or_group in choices]
    if not swept:
        return
    for o in plan.command_line:
        key = o.key_or_group
        if o.is_sweep_override() or key in choices or key.startswith("hydra") or o.input_line.startswith(("+", "~")):
            continue
        if not has_key(base, key):
            group = key.split(".", 1)[0]
            where = f" ({group}={choices[group]} there)" if choices.get(group) else ""
            raise UserError(f"{o.input_line}: Hydra applies fixed values to the sweep's base config before it sweeps "
                            f"{', '.join(s.input_line for s in swept)}, and that base has no key '{key}'{where}; "
                            f"make it a one-value sweep so each job gets it: '{key}=choice({o.value()})'")


def _check_direction(configs: list[DictConfig], sweeper: Any) -> None:
    """Optuna optimises what the task function returns: the run's best trainer.monitor, best by trainer.mode."""
    if "direction" not in sweeper:
        return
    direction = sweeper.direction
    if OmegaConf.is_list(direction) or isinstance(direction, list):
        return  # several objectives: dl returns one value, Optuna will say so
    direction = str(getattr(direction, "name", direction))
    for cfg in configs:
        want = {"min": "minimize", "max": "maximize"}.get(str(cfg.trainer.mode))
        if want and direction != want:
            raise UserError(f"hydra.sweeper.direction={direction} but trainer.mode={cfg.trainer.mode} "
                            f"(trainer.monitor={cfg.trainer.monitor}): the sweeper would {direction} what dl keeps "
                            f"the {'lowest' if want == 'minimize' else 'highest'} of; set "
                            f"hydra.sweeper.direction={want}, or trainer.mode to match")


def _check_storage(sweeper: Any) -> None:
    """hydra-optuna-sweeper pins optuna < 3; optuna 2.x cannot open a database through SQLAlchemy 2 (its study
    creation fails on an assertion), and alembic, which optuna needs, now requires SQLAlchemy 2."""
    if sweeper.get("storage") is None:
        return

    try:
        optuna, sqlalchemy = version("optuna"), version("sqlalchemy")
    except PackageNotFoundError:
        return
    if int(optuna.split(".")[0]) < 3 and int(sqlalchemy.split(".")[0]) >= 2:
        raise UserError(f"hydra.sweeper.storage={sweeper.storage}: optuna {optuna} (what hydra-optuna-sweeper "
                        f"allows) cannot use a database with SQLAlchemy {sqlalchemy}; leave storage null: the study "
                        "lives in memory, its results in optimization_results.yaml and summary.csv")


def _check_monitor(cfg: DictConfig) -> None:
    """Build the job's task and model on the CPU and look at the metric names one tiny batch gives."""
    # lazy (with the three below): torch, only to check a sweep's monitor; dl train --help stays torch-free
    import torch

    from dlcli.config.check import check_config, check_monitor as check_logged
    from dlcli.data import build_task
    from dlcli.models import build_model

    check_config(cfg)
    task = build_task(cfg.dataset, cfg.loss, torch.device("cpu"))
    check_logged(cfg, task, build_model(cfg.model, task.meta))
