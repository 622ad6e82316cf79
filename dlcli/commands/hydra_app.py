"""Hydra side of `dl train`: validate the overrides, pick a fresh run dir, then hand over to @hydra.main.

Hydra owns the arguments. Before it runs anything we compose every job's config ourselves (cheap), so that a bad
override ends in one clear line and exit 2 instead of a Hydra stack, and before any directory is made.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from dlcli.base.errors import UserError
from dlcli.base.overrides import budget_epochs, hydra_path, unquote
from dlcli.base.targets import dataset_name, model_name
from dlcli.config.compose import compose_jobs
from dlcli.config.schema import ranges_help
from dlcli.config.search_path import checked_source, take_config_sources, user_configs_first
from dlcli.engine.run_dir import LOCK, STAGE, acquire, discard_staged, release, stage

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


@hydra.main(config_path="pkg://dlcli.conf", config_name="config", version_base="1.3")
def hydra_entry(cfg: DictConfig) -> float | None:
    """What Hydra calls once per job. Returns the best monitored value (for sweepers such as Optuna)."""
    from dlcli.commands.job import run_job  # lazy: torch, once Hydra runs a job

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
    flags, overrides, sources = take_config_sources(flags, overrides)
    overrides = budget_epochs(overrides)
    if any(f in PASSTHROUGH for f in flags):
        try:
            with user_configs_first(sources):
                _call_hydra(flags, overrides)
        finally:
            if "--help" in flags or "-h" in flags:  # after Hydra's page (it exits): the ranges dl checks
                print(ranges_help())
        return
    # lazy (with the imports below): dl train --help / --cfg answer without torch
    from dlcli.engine.resume import recorded_config, resume_overrides

    overrides, resume_dir = resume_overrides(overrides)
    recorded: list[str] = []
    if resume_dir is not None:  # the resumed run's own config folders and primary config
        urls, name = recorded_config(resume_dir)
        recorded = [checked_source(url, "hydra.searchpath") for url in urls]
        if config_name(flags) == "config":
            flags += ["--config-name", name]
    with user_configs_first(sources + recorded):
        _check_and_run(flags, overrides, resume_dir)


def _check_and_run(flags: list[str], overrides: list[str], resume_dir: Path | None) -> None:
    multirun = "-m" in flags or "--multirun" in flags
    _check_launcher(overrides)
    if resume_dir is not None and multirun:
        raise UserError("trainer.resume continues one run; it cannot go with -m (resume each job on its own)")
    from dlcli.config.check import check_config  # imports torch: not before the --help/--cfg pass-through

    configs = compose_jobs(overrides, multirun, config_name(flags), check=check_config)
    if resume_dir is not None:
        from dlcli.engine.resume import check_resumable  # lazy: torch

        check_resumable(Path(configs[0].trainer.resume), configs[0])
    from dlcli.engine import distributed  # lazy: torch

    if distributed.launched():  # torchrun started this process as one of several
        if multirun:
            raise UserError("-m cannot run under torchrun (each rank would start the whole sweep); sweep with "
                            "dl train -m ... trainer.devices=N, which starts N processes per job")
        from dlcli.engine.runtime import resolve_device  # lazy: torch

        distributed.init(resolve_device(configs[0].device))
    if multirun:
        _run_sweep(flags, overrides)
    else:
        _run_one(flags, overrides, resume_dir, configs[0])


def _run_sweep(flags: list[str], overrides: list[str]) -> None:
    sweep_dir = _user_dir(overrides, "hydra.sweep.dir") or fresh_dir(Path("outputs/sweeps"), "")
    try:
        _call_hydra(flags, overrides + [f"hydra.sweep.dir={sweep_dir}"])
    finally:
        _remove_if_empty(sweep_dir)
    from dlcli.reports.runs import summarize_sweep  # lazy: torch (plots)

    summarize_sweep(sweep_dir)
    from dlcli.reports.experiments import report_sweep  # lazy: torch (plots)

    report_sweep(sweep_dir)  # +experiment=...: the lesson's table + picture; Optuna: its best trial


def _run_one(flags: list[str], overrides: list[str], resume_dir: Path | None, cfg: DictConfig) -> None:
    from dlcli.engine import distributed  # lazy: torch

    run_dir = _one_run_dir(overrides, resume_dir, cfg)
    extra = []
    if distributed.is_main():
        acquire(run_dir)  # one writer per run dir: a resume of a live run stops here
        if resume_dir is not None:  # Hydra's record of the new job waits in .hydra.resume/ until training restarts
            log = stage(run_dir) / "train.log"
            extra = [f"hydra.output_subdir={STAGE}", f"hydra.job_logging.handlers.file.filename={hydra_path(log)}"]
    try:
        _call_hydra(flags, overrides + [f"hydra.run.dir={hydra_path(run_dir)}", *extra,
                                        *distributed.hydra_overrides()])
    finally:
        if distributed.is_main():
            discard_staged(run_dir)  # a resume refused before it trained: the run stays as it was
            _remove_if_empty(run_dir)  # Hydra refused its arguments (dl train --foo): leave no empty run dir
            release(run_dir)


def config_name(flags: list[str]) -> str:
    """The primary config's name: --config-name NAME (from the user's folders or dl's), else dl's config.yaml."""
    names = [value for flag, value in zip(flags, flags[1:]) if flag in ("--config-name", "-cn")]
    names += [f.split("=", 1)[1] for f in flags if f.startswith(("--config-name=", "-cn="))]
    return names[-1].removesuffix(".yaml") if names else "config"


def _one_run_dir(overrides: list[str], resume_dir: Path | None, cfg: DictConfig) -> Path:
    """The resumed run's dir, hydra.run.dir=PATH, or a fresh one. Under torchrun, rank 0 picks it as one process
    would and every rank gets the same (the others drop their hydra.run.dir=: rank 0 has checked and made it)."""
    from dlcli.engine import distributed  # lazy: torch

    run_dir = None
    if distributed.is_main():
        run_dir = resume_dir or _user_dir(overrides, "hydra.run.dir") or fresh_dir(
            Path("outputs/runs"), f"_{model_name(cfg.model)}_{dataset_name(cfg.dataset)}")
    else:
        overrides[:] = [o for o in overrides if not o.startswith("hydra.run.dir=")]
    return Path(distributed.broadcast_text(str(run_dir) if run_dir else None))


# hydra/launcher options that come with the hydra-submitit-launcher plugin (ours in conf/hydra/launcher/ extend them)
SUBMITIT_LAUNCHERS = {"submitit_local", "submitit_slurm", "slurm"}


def _check_launcher(overrides: list[str]) -> None:
    import importlib.util  # only for hydra/launcher=submitit options

    for o in overrides:
        key, _, value = o.partition("=")
        if key.lstrip("+") == "hydra/launcher" and value in SUBMITIT_LAUNCHERS and \
                importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
            raise UserError(f"{o} needs Hydra's submitit launcher plugin: pip install 'dlcli[submitit]' "
                            "(that is hydra-submitit-launcher)")


def _remove_if_empty(path: Path) -> None:
    """Remove a run dir nothing was written to (its own lock file aside); never anything else."""
    try:
        if [p.name for p in path.iterdir()] == [LOCK]:
            (path / LOCK).unlink()
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
            path = Path(unquote(o.split("=", 1)[1]))
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
