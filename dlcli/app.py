"""Hydra side of `dl train`: validate the overrides, pick a fresh run dir, then hand over to @hydra.main.

Hydra owns the arguments. Before it runs anything we compose every job's config ourselves (cheap), so that a bad
override ends in one clear line and exit 2 instead of a Hydra stack, and before any directory is made.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from dlcli.errors import UserError, choices

CONFIG_MODULE = "dlcli.conf"
# Hydra flags that take a value (the value follows as the next argument).
FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                    "--config-dir", "-cd", "--experimental-rerun", "--shell-completion", "-sc"}
INFO_CHOICES = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}
# Flags after which Hydra prints something and trains nothing: no validation, no run dir.
PASSTHROUGH = {"--help", "-h", "--hydra-help", "--version", "--cfg", "-c", "--info", "-i",
               "--shell-completion", "-sc", "--experimental-rerun"}
# Hydra's mutually exclusive modes, by flag.
MODES = {"-m": "multirun", "--multirun": "multirun", "--cfg": "cfg", "-c": "cfg", "--info": "info", "-i": "info",
         "--run": "run", "-r": "run", "--shell-completion": "completion", "-sc": "completion"}
# Keys whose default is a number but which also take one of these words.
WORD_VALUES = {"trainer.batch_size": {"full"}}


@hydra.main(config_path="pkg://dlcli.conf", config_name="config", version_base="1.3")
def hydra_entry(cfg: DictConfig) -> float | None:
    """What Hydra calls once per job. Returns the best monitored value (for sweepers such as Optuna)."""
    from dlcli.train import run_job

    return run_job(cfg)


def split_args(args: list[str]) -> tuple[list[str], list[str]]:
    """Separate Hydra flags (with their values) from overrides: Hydra 1.3 wants the flags first."""
    flags: list[str] = []
    overrides: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("-"):  # overrides never start with "-" (deletion is ~key)
            flags.append(arg)
            if arg in FLAGS_WITH_VALUE and i + 1 < len(args):
                flags.append(args[i + 1])
                i += 1
            elif arg in ("--info", "-i") and i + 1 < len(args) and args[i + 1] in INFO_CHOICES:
                flags.append(args[i + 1])
                i += 1
        else:
            overrides.append(arg)
        i += 1
    return flags, overrides


def train_cli(args: list[str]) -> None:
    """`dl train ARGS`: check, choose the output dir, run Hydra, then summarise a sweep."""
    flags, overrides = split_args(args)
    modes = {f for f in flags if f in MODES}
    if len({MODES[f] for f in modes}) > 1:
        raise UserError(f"{' and '.join(sorted(modes))} cannot go together; give one of --multirun, --cfg, --info")
    multirun = "-m" in flags or "--multirun" in flags
    if any(f in PASSTHROUGH for f in flags):
        _call_hydra(flags, overrides)
        return
    from dlcli.resume import resume_overrides

    overrides, resume_dir = resume_overrides(overrides)
    _check_launcher(overrides)
    if resume_dir is not None and multirun:
        raise UserError("trainer.resume continues one run; it cannot go with -m (resume each job on its own)")
    configs = compose_jobs(overrides, multirun)
    from dlcli.train import check_config

    for cfg in configs:
        check_config(cfg)
    if resume_dir is not None:
        from dlcli.resume import check_resumable

        check_resumable(Path(configs[0].trainer.resume), configs[0])
    from dlcli import distributed

    if distributed.launched():  # torchrun started this process as one of several
        if multirun:
            raise UserError("-m cannot run under torchrun (each rank would start the whole sweep); sweep with "
                            "dl train -m ... trainer.devices=N, which starts N processes per job")
        from dlcli.runtime import resolve_device

        distributed.init(resolve_device(configs[0].device))
    if multirun:
        sweep_dir = _user_dir(overrides, "hydra.sweep.dir") or fresh_dir(Path("outputs/sweeps"), "")
        try:
            _call_hydra(flags, overrides + [f"hydra.sweep.dir={sweep_dir}"])
        finally:
            _remove_if_empty(sweep_dir)
        from dlcli.runs import summarize_sweep

        summarize_sweep(sweep_dir)
        from dlcli.experiments import report_sweep

        report_sweep(sweep_dir)  # +experiment=...: the lesson's table + picture; Optuna: its best trial
    else:
        run_dir = _one_run_dir(overrides, resume_dir, configs[0])
        try:
            _call_hydra(flags, overrides + [f"hydra.run.dir={hydra_path(run_dir)}", *distributed.hydra_overrides()])
        finally:
            if distributed.is_main():
                _remove_if_empty(run_dir)  # Hydra refused its arguments (dl train --foo): leave no empty run dir


def _one_run_dir(overrides: list[str], resume_dir: Path | None, cfg: DictConfig) -> Path:
    """The resumed run's dir, hydra.run.dir=PATH, or a fresh one. Under torchrun, rank 0 picks it as one process
    would and every rank gets the same (the others drop their hydra.run.dir=: rank 0 has checked and made it)."""
    from dlcli import distributed

    run_dir = None
    if distributed.is_main():
        run_dir = resume_dir or _user_dir(overrides, "hydra.run.dir") or fresh_dir(
            Path("outputs/runs"), f"_{cfg.model.name}_{cfg.dataset.name}")
    else:
        overrides[:] = [o for o in overrides if not o.startswith("hydra.run.dir=")]
    return Path(distributed.broadcast_text(str(run_dir) if run_dir else None))


# hydra/launcher options that come with the hydra-submitit-launcher plugin (ours in conf/hydra/launcher/ extend them)
SUBMITIT_LAUNCHERS = {"submitit_local", "submitit_slurm", "slurm"}


def _check_launcher(overrides: list[str]) -> None:
    import importlib.util

    for o in overrides:
        key, _, value = o.partition("=")
        if key.lstrip("+") == "hydra/launcher" and value in SUBMITIT_LAUNCHERS and \
                importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
            raise UserError(f"{o} needs Hydra's submitit launcher plugin: pip install 'dlcli[submitit]' "
                            "(that is hydra-submitit-launcher)")


def hydra_path(path: Path) -> str:
    """A path as an override value: quoted, so that '=', ',' and spaces (a sweep job's dir has them) stay one string."""
    if "'" in str(path):
        raise UserError(f"the run directory {path} has a quote in it; choose another one with hydra.run.dir=PATH")
    return f"'{path}'"


def _unquote(value: str) -> str:
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"" else value


def _remove_if_empty(path: Path) -> None:
    try:
        path.rmdir()  # only ever removes an empty directory
    except OSError:
        pass


def _call_hydra(flags: list[str], overrides: list[str]) -> None:
    argv = sys.argv
    sys.argv = ["dl train", *flags, *overrides]
    try:
        hydra_entry()
    finally:
        sys.argv = argv


def fresh_dir(parent: Path, suffix: str) -> Path:
    """Make outputs/runs/<YYYY-MM-DD_HH-MM-SS><suffix>, or -2, -3... after it: an exclusive mkdir, so runs started
    in the same second (even by two processes at once) never share a directory."""
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        n = 1
        while True:
            candidate = parent / (f"{stamp}{suffix}" if n == 1 else f"{stamp}{suffix}-{n}")
            try:
                candidate.mkdir()
                return candidate
            except FileExistsError:
                n += 1
    except OSError as e:
        raise UserError(f"cannot create a run directory under {parent}: {e.strerror}; run dl where you can "
                        "write, or choose a directory with hydra.run.dir=PATH / hydra.sweep.dir=PATH") from None


def _user_dir(overrides: list[str], key: str) -> Path | None:
    for o in overrides:
        if o.startswith(key + "="):
            path = Path(_unquote(o.split("=", 1)[1]))
            if (path / "run.json").exists() or (path / "summary.csv").exists():
                raise UserError(f"{key}={path} already holds a run; pick a new directory (nothing was changed)")
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise UserError(f"{key}={path}: cannot create it ({e.strerror}); choose a directory you can "
                                "write") from None
            overrides.remove(o)
            return path
    return None


# ---------------------------------------------------------------------------------------------- composition checks
def compose_jobs(overrides: list[str], multirun: bool) -> list[DictConfig]:
    """Compose the config of every job the overrides describe; raise UserError naming the first bad override."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException, OverrideParseException

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        groups = {g for g in loader.list_groups("") if g != "hydra"}
        parser = OverridesParser.create()
        try:
            parsed = parser.parse_overrides([o for o in overrides if not o.startswith("hydra.")])
        except OverrideParseException as e:
            raise UserError(f"cannot read override: {str(e).splitlines()[0]}") from None
        from dlcli import sweeps

        def check_groups(parsed: list) -> None:
            for o in parsed:
                if o.is_sweep_override() and not multirun:
                    raise UserError(f"{o.input_line} lists several values: add -m (multirun) to sweep over them")
                group = o.key_or_group.lstrip("+~")
                if group in groups and not o.is_delete():
                    options = loader.get_group_options(group)
                    for value in sweeps.sweep_values(o):  # choice/range values, an interval's ends
                        if value not in options:
                            raise UserError(f"{group}={value}: no such {group}{choices(value, options)}")

        check_groups(parsed)  # first the command line: +experiment=NAME must exist before its file is read
        # an experiment's or hparams_search's hydra.sweeper.params are part of every job, like the command line
        parsed, sweeper = sweeps.with_sweeper_params(overrides, parsed, parser, multirun, groups)
        check_groups(parsed)
        jobs = sweeps.job_lists(parsed, sweeper) if multirun else [[o.input_line for o in parsed]]
        configs = []
        bases: dict[tuple, DictConfig] = {}
        for job in jobs:
            # hydra/launcher=..., hydra/sweeper=...: Hydra's own groups, composed (and checked) like ours
            group_part = tuple(o for o in job if o.split("=", 1)[0].lstrip("+~") in groups
                               or o.lstrip("+~").startswith("hydra/"))
            try:
                if group_part not in bases:
                    bases[group_part] = compose("config", overrides=list(group_part))
                base = bases[group_part]
                _check_keys(base, [o for o in job if o not in group_part])
                cfg = compose("config", overrides=job)
            except HydraException as e:
                raise UserError(sweeps.composition_hint(str(e)) or _first_line(e)) from None
            _check_types(base, cfg, [o for o in job if o not in group_part])
            configs.append(cfg)
    GlobalHydra.instance().clear()
    if multirun:
        sweeps.check_sweep(configs, sweeper)  # Optuna's direction vs trainer.mode; a monitor the task never logs
    return configs


def _first_line(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def _has_key(cfg: Any, key: str) -> bool:
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


def _leaf_keys(cfg: Any, prefix: str = "") -> list[str]:
    out = []
    if isinstance(cfg, DictConfig):
        for k in cfg.keys():
            out += _leaf_keys(cfg._get_node(k), f"{prefix}{k}.")
    else:
        out.append(prefix[:-1])
    return out


def _check_keys(base: DictConfig, job: list[str]) -> None:
    """An override of a key that does not exist: say so and suggest the close one."""
    for o in job:
        key = o.split("=", 1)[0]
        if key.startswith(("+", "~")):
            continue
        if not _has_key(base, key):
            import difflib

            close = difflib.get_close_matches(key, _leaf_keys(base), n=1)
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
