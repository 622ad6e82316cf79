"""Compose every job's config the way Hydra will, before Hydra runs anything: a bad override ends in one clear line
naming it (no such group option, no such key, wrong type), before any directory is made."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, OverrideParseException
from omegaconf import DictConfig, ListConfig, OmegaConf

from dlcli.base.errors import UserError, choices
from dlcli.config import sweeps
from dlcli.config.keys import has_key, leaf_keys
from dlcli.config.schema import CHOICES, SCHEMA
from dlcli.config.search_path import UserConfigsFirst, naming_user_file

CONFIG_MODULE = "dlcli.conf"
# Keys whose default is a number but which also take one of these words (trainer.batch_size=full, epochs=auto).
WORD_VALUES = {key: set(rule.words) for key, rule in SCHEMA.items() if rule.words}
WORD_VALUES.update({key: {v for v in values if isinstance(v, str)} for key, values in CHOICES.items()})


def compose_jobs(overrides: list[str], multirun: bool, config_name: str = "config",
                 check: Callable[[DictConfig], None] | None = None) -> list[DictConfig]:
    """Compose the config of every job the overrides describe; raise UserError naming the first bad override.
    The user's config folders are searched first (config/search_path.py), as when Hydra runs the jobs. `check`
    runs on each job's config; a problem in the user's model or dataset YAML names that file."""
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        groups = {g for g in loader.list_groups("") if g != "hydra"}
        parser = OverridesParser.create(config_loader=loader)  # glob(...) sweeps list group options through it
        parsed = parse(parser, [o for o in overrides if not o.startswith("hydra.")])
        check_repeats(parsed)

        def check_groups(parsed: list) -> None:
            for o in parsed:
                if o.is_sweep_override() and not multirun:
                    raise UserError(f"{o.input_line} lists several values: add -m (multirun) to sweep over them")
                group = o.key_or_group.lstrip("+~")
                if group in groups and not o.is_delete():
                    options = loader.get_group_options(group, config_name=config_name)
                    for value in sweeps.sweep_values(o):  # choice/range values, an interval's ends
                        if value not in options:
                            raise UserError(f"{group}={value}: no such {group}{choices(value, options)}")

        check_groups(parsed)  # first the command line: +experiment=NAME must exist before its file is read
        # an experiment's or hparams_search's hydra.sweeper.params are part of every job, like the command line
        parsed, sweeper = sweeps.with_sweeper_params(overrides, parsed, parser, multirun, groups, config_name)
        check_groups(parsed)
        jobs = sweeps.job_lists(parsed, sweeper) if multirun else [[o.input_line for o in parsed]]
        empty = [o.input_line for o in parsed if o.is_sweep_override() and not sweeps.sweep_values(o)]
        if empty or not jobs:
            raise UserError(f"{' '.join(empty) or 'the sweep'}: no value to run (a glob that matches no option?); "
                            "see the options with: dl ls")
        configs = []
        bases: dict[tuple, DictConfig] = {}
        for job in jobs:
            # hydra/launcher=..., hydra/sweeper=...: Hydra's own groups, composed (and checked) like ours
            group_part = tuple(o for o in job if o.split("=", 1)[0].lstrip("+~") in groups
                               or o.lstrip("+~").startswith("hydra/"))
            try:
                if group_part not in bases:
                    bases[group_part] = compose(config_name, overrides=list(group_part))
                base = bases[group_part]
                _check_keys(base, [o for o in job if o not in group_part])
                cfg = compose(config_name, overrides=job)
            except HydraException as e:
                raise UserError(sweeps.composition_hint(str(e)) or _first_line(e)) from None
            _check_types(base, cfg, [o for o in job if o not in group_part])
            if check is not None:
                try:
                    check(cfg)
                except UserError as e:
                    picked = compose(config_name, overrides=job, return_hydra_config=True).hydra.runtime.choices
                    raise naming_user_file(e, picked, UserConfigsFirst.sources) from None
            configs.append(cfg)
    GlobalHydra.instance().clear()
    if multirun:
        sweeps.check_sweep(configs, sweeper)  # Optuna's direction vs trainer.mode; a monitor the task never logs
    return configs


def _first_line(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def _check_keys(base: DictConfig, job: list[str]) -> None:
    """An override of a key that does not exist: say so and suggest the close one."""
    for o in job:
        key = o.split("=", 1)[0]
        if key.startswith(("+", "~")):
            continue
        if not has_key(base, key):
            close = difflib.get_close_matches(key, leaf_keys(base), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UserError(f"{o}: there is no key '{key}'{hint}; add a new key with +{o}, "
                            "or see every key with: dl train --cfg job")


def _check_types(base: DictConfig, cfg: DictConfig, job: list[str]) -> None:
    """A value whose type differs from the default's (trainer.epochs=abc): one clear line."""
    for o in job:
        key = o.split("=", 1)[0]
        if key.startswith(("+", "~")):
            continue
        try:
            default = OmegaConf.select(base, key, throw_on_missing=True)
            value = OmegaConf.select(cfg, key, throw_on_missing=True)
        except Exception:  # missing mandatory (???) or interpolation to a missing value: checked later
            continue
        if default is None or value is None or value in WORD_VALUES.get(key, ()):
            continue
        want = _type_name(default)
        ok = {
            "a boolean (true/false)": isinstance(value, bool),
            "an integer": isinstance(value, int) and not isinstance(value, bool),
            "a number": isinstance(value, (int, float)) and not isinstance(value, bool),
            "a list, e.g. [64,64]": isinstance(value, (list, ListConfig)),
            "a mapping": isinstance(value, (dict, DictConfig)),
            "a text value": not isinstance(value, (list, ListConfig, dict, DictConfig)),
        }[want]
        if not ok:
            words = WORD_VALUES.get(key)
            extra = f" or {' / '.join(sorted(words))}" if words else ""
            raise UserError(f"{o}: {key} must be {want}{extra} (default: {_show(default)})")


def _type_name(v: Any) -> str:
    if isinstance(v, bool):
        return "a boolean (true/false)"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a number"
    if isinstance(v, (list, ListConfig)):
        return "a list, e.g. [64,64]"
    if isinstance(v, (dict, DictConfig)):
        return "a mapping"
    return "a text value"


def _show(v: Any) -> str:
    if isinstance(v, (ListConfig, DictConfig)):
        return str(OmegaConf.to_container(v))
    return str(v)


def parse(parser: Any, overrides: list[str]) -> list[Any]:
    """Hydra's parse of each override; one that does not parse is named, with what usually went wrong."""
    parsed = []
    for o in overrides:
        try:
            parsed += parser.parse_overrides([o])
        except OverrideParseException:
            if "=" not in o:
                hint = ("not key=value: a value with a space must be quoted as a whole, e.g. "
                        "dataset.path='my file.csv' (a lone word after a space is read as its own override)")
            elif o.rstrip().endswith(","):
                hint = "a trailing comma: a list of values to sweep needs a value after each comma (and -m)"
            else:
                hint = ("Hydra cannot read it; quote a value with special characters (= , [ ] { } ' \" spaces): "
                        "key='value'")
            raise UserError(f"{o}: {hint}") from None
    return parsed


def check_repeats(parsed: list[Any]) -> None:
    """The same key (or group) twice: Hydra would keep the last silently (a sweep would lose its list)."""
    seen: dict[str, str] = {}
    for o in parsed:
        key = o.key_or_group
        if o.is_delete() or o.is_add() and key not in seen:
            seen.setdefault(key, o.input_line)
            continue
        if key in seen:
            raise UserError(f"{key} is given twice ({seen[key]} and {o.input_line}); give it once "
                            f"(a sweep lists its values in one override: {key}=a,b)")
        seen[key] = o.input_line
