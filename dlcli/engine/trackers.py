"""Experiment trackers beside metrics.jsonl: MLflow (logger=mlflow) and Weights & Biases (logger=wandb).

Each gets the composed config as params, every metric as MetricsLogger logs it (`split/name`, with its step), and at
the end the run's plots, summary.json and Hydra config, marked with how the run ended (completed, failed or
interrupted). Only rank 0 has any: MetricsLogger is built there alone. Both packages are optional extras, imported
here and only when chosen. A resume continues the tracker's run whose id the run dir holds (trackers.json)."""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, Protocol
from urllib.error import HTTPError, URLError
from urllib.parse import urlparse
from urllib.request import urlopen

from omegaconf import DictConfig, OmegaConf

from dlcli.base.errors import UserError
from dlcli.base.targets import dataset_name, model_name

TRACKERS = ("mlflow", "wandb")
WANDB_MODES = ("offline", "online", "disabled")
IDS = "trackers.json"  # {tracker: {run id, where}}: what a resume continues


class Tracker(Protocol):
    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_artifacts(self, run_dir: Path, paths: list[Path]) -> None: ...
    def close(self, status: str) -> None: ...


def check_trackers(logger_cfg: DictConfig) -> None:
    """logger.tracker names a tracker whose package is installed (checked with the config, before any work)."""
    name = logger_cfg.get("tracker")
    if name is None:
        return
    if name not in TRACKERS:
        raise UserError(f"logger.tracker={name}: choose mlflow or wandb (logger=mlflow, logger=wandb) or null")
    if importlib.util.find_spec(name) is None:
        _missing(name)
    if name == "wandb" and logger_cfg.get("mode") not in WANDB_MODES:
        raise UserError(f"logger.mode={logger_cfg.get('mode')}: choose {', '.join(WANDB_MODES)}")


def _missing(name: str) -> NoReturn:
    raise UserError(f"logger={name} needs the {name} package: pip install 'dlcli[{name}]' (or use logger=default)")


class Trackers:
    """The run's trackers as one. A tracker that fails mid-run (a tracking server gone) is dropped with a warning:
    metrics.jsonl keeps every value, and a long training run is not lost to a logging hiccup."""

    def __init__(self, items: list[Tracker], warn: Callable[[str], None]):
        self.items, self.warn = items, warn

    def _each(self, call: Callable[[Tracker], None]) -> None:
        for tracker in list(self.items):
            try:
                call(tracker)
            except Exception as e:
                self.items.remove(tracker)
                self.warn(f"{getattr(tracker, 'name', type(tracker).__name__)} stopped logging ({type(e).__name__}: "
                          f"{(str(e).splitlines() or [''])[0][:160]}); metrics.jsonl has every value")

    def log_params(self, params: dict[str, Any]) -> None:
        self._each(lambda t: t.log_params(params))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._each(lambda t: t.log_metrics(metrics, step))

    def end(self, run_dir: Path, status: str) -> None:
        """The run's files as artifacts, then how it ended; once (later calls do nothing)."""
        paths = run_artifacts(run_dir)
        self._each(lambda t: t.log_artifacts(run_dir, paths))
        self._each(lambda t: t.close(status))
        self.items = []


def run_artifacts(run_dir: Path) -> list[Path]:
    """What a tracker keeps of a run's files: plots, summary.json, Hydra's record of the config."""
    found = [*sorted((run_dir / "plots").glob("*.png")), run_dir / "summary.json",
             *sorted((run_dir / ".hydra").glob("*.yaml"))]
    return [p for p in found if p.is_file()]


def open_trackers(cfg: DictConfig, run_dir: Path, resumed: bool, say: Callable[[str], None],
                  warn: Callable[[str], None]) -> Trackers | None:
    """The tracker logger.tracker names, started, with the config logged as params; None without one (and for a
    trainer.fast_dev_run, which keeps nothing)."""
    name = cfg.logger.get("tracker")
    if name is None or cfg.trainer.get("fast_dev_run"):
        return None
    check_trackers(cfg.logger)
    previous = _recorded(run_dir).get(name) if resumed else None
    tags = {"model": model_name(cfg.model), "dataset": dataset_name(cfg.dataset), "run_dir": str(run_dir.resolve())}
    tracker = (MlflowTracker if name == "mlflow" else WandbTracker)(cfg.logger, run_dir, previous, tags, say)
    trackers = Trackers([tracker], warn)
    trackers.log_params(flat_config(cfg))
    return trackers


def flat_config(cfg: DictConfig) -> dict[str, Any]:
    """The composed config as dot keys (`trainer.epochs`), values resolved where they can be."""
    try:
        data = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # an interpolation only Hydra's job context resolves: kept as written
        data = OmegaConf.to_container(cfg, resolve=False)
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            flat[prefix[:-1]] = node

    walk(data, "")
    return flat


def _recorded(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / IDS).read_text())
    except (OSError, ValueError):
        return {}


def _record(run_dir: Path, name: str, entry: dict[str, Any]) -> None:
    data = {**_recorded(run_dir), name: entry}
    tmp = run_dir / f".{IDS}.tmp"  # replaced whole, as run.json is
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, run_dir / IDS)


def _first_line(e: BaseException) -> str:
    """The error in one line (a pydantic error's first line alone says little)."""
    return " ".join(str(e).split())[:240] or type(e).__name__


class MlflowTracker:
    """One MLflow run per dl run, in logger.experiment (a sweep: one run per job, side by side)."""

    name = "mlflow"
    STATUS = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}

    def __init__(self, lcfg: DictConfig, run_dir: Path, previous: dict | None, tags: dict[str, str],
                 say: Callable[[str], None]):
        try:
            from mlflow import MlflowClient  # optional: logger=mlflow only
            from mlflow.entities import Metric, Param
        except ImportError:
            _missing("mlflow")
        self.Metric, self.Param = Metric, Param
        uri = str(lcfg.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI") or (Path.cwd() / "mlruns").as_uri())
        if urlparse(uri).scheme in ("", "file"):
            # MLflow 3 keeps its local folder store only on request; mlflow-skinny has no database backend for it
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        _reachable(uri)
        try:
            self.client = MlflowClient(tracking_uri=uri)
            experiment = str(lcfg.get("experiment") or "dl")
            self.run_id = self._continued(previous, uri)
            continued = self.run_id is not None
            self.params: dict[str, str] = {}
            if continued:
                self.client.update_run(self.run_id, status="RUNNING")
                self.client.set_tag(self.run_id, "status", "running")
                self.params = dict(self.client.get_run(self.run_id).data.params)
            else:
                found = self.client.get_experiment_by_name(experiment)
                exp_id = found.experiment_id if found else self._create_experiment(experiment)
                self.run_id = self.client.create_run(exp_id, run_name=run_dir.name,
                                                     tags={**tags, "status": "running"}).info.run_id
        except UserError:
            raise
        except Exception as e:
            raise UserError(f"logger.tracking_uri={uri}: MLflow failed ({_first_line(e)}); check the URI or the "
                            "server, or use logger=default") from None
        _record(run_dir, "mlflow", {"run_id": self.run_id, "tracking_uri": uri, "experiment": experiment})
        atexit.register(self.close, "failed")  # a process that ends without closing the run (closed: no-op)
        say(f"mlflow: {'continuing ' if continued else ''}run {self.run_id} in experiment {experiment} at {uri}")

    def _continued(self, previous: dict | None, uri: str) -> str | None:
        """The resumed run's MLflow run, if it was logged to this store and is still there."""
        if not previous or previous.get("tracking_uri") != uri:
            return None
        try:
            return self.client.get_run(previous["run_id"]).info.run_id
        except Exception:  # deleted, or the store moved: a new MLflow run
            return None

    def _create_experiment(self, name: str) -> str:
        try:
            return self.client.create_experiment(name)
        except Exception:  # a sweep's parallel job created it first
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def log_params(self, params: dict[str, Any]) -> None:
        """As MLflow keeps them: text within its length limits; a resume's changed values (MLflow never changes a
        logged param) go into one tag."""
        from mlflow.utils import validation  # optional: as above

        longest = getattr(validation, "MAX_PARAM_VAL_LENGTH", 500)
        text = {k[:250]: _text(v)[:longest] for k, v in params.items()}
        new = [self.Param(k, v) for k, v in text.items() if k not in self.params]
        changed = [f"{k}={v}" for k, v in text.items() if k in self.params and self.params[k] != v]
        for i in range(0, len(new), 100):  # MLflow takes 100 params per call
            self.client.log_batch(self.run_id, params=new[i:i + 100])
        if changed:
            self.client.set_tag(self.run_id, "resumed_with", " ".join(changed)[:5000])
        self.params.update(text)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        batch = [self.Metric(_metric_key(k), float(v), now, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def log_artifacts(self, run_dir: Path, paths: list[Path]) -> None:
        for path in paths:
            folder = path.parent.relative_to(run_dir).as_posix()
            self.client.log_artifact(self.run_id, str(path), None if folder == "." else folder)

    def close(self, status: str) -> None:
        if self.run_id is None:
            return
        run_id, self.run_id = self.run_id, None
        atexit.unregister(self.close)
        self.client.set_tag(run_id, "status", status)
        self.client.set_terminated(run_id, self.STATUS[status])


def _reachable(uri: str) -> None:
    """A tracking server that does not answer: one line now, not MLflow's minutes of retries (they stay for the
    logging calls, where a server's hiccup should not end a run)."""
    if urlparse(uri).scheme not in ("http", "https"):
        return
    try:
        urlopen(f"{uri.rstrip('/')}/health", timeout=10).close()
    except HTTPError:  # it answered (a proxy, no /health route): MLflow's own calls say more
        return
    except (URLError, OSError) as e:
        raise UserError(f"logger.tracking_uri={uri}: no MLflow server answers there "
                        f"({getattr(e, 'reason', e)}); start it, fix the URI, or use logger=default") from None


def _text(v: Any) -> str:
    return "null" if v is None else json.dumps(v) if isinstance(v, (list, dict, bool)) else str(v)


def _metric_key(key: str) -> str:
    """MLflow takes letters, digits and _ - . space : / in names (a gradient-norm group may be `(model)`)."""
    return re.sub(r"[^\w\-. :/]", "_", key)


class WandbTracker:
    """A Weights & Biases run in <run>/wandb/: offline by default (`wandb sync <dir>` uploads it later)."""

    name = "wandb"

    def __init__(self, lcfg: DictConfig, run_dir: Path, previous: dict | None, tags: dict[str, str],
                 say: Callable[[str], None]):
        try:
            import wandb  # optional: logger=wandb only
        except ImportError:
            _missing("wandb")
        self.wandb = wandb
        mode = str(lcfg.get("mode") or "offline")
        try:
            self.run = wandb.init(project=str(lcfg.get("project") or "dl"), entity=lcfg.get("entity"),
                                  dir=str(run_dir), name=run_dir.name, mode=mode,
                                  id=previous["id"] if previous else None, resume="allow" if previous else None,
                                  tags=[tags["model"], tags["dataset"]], notes=tags["run_dir"],
                                  settings=wandb.Settings(console="off", silent=True))
        except Exception as e:
            raise UserError(f"logger=wandb: wandb.init failed ({_first_line(e)}); for logger.mode=online log in "
                            "with `wandb login`, or use logger.mode=offline") from None
        # dl's own step as the x axis: a resume logs its steps again, which W&B's own step would refuse
        self.run.define_metric("trainer/step")
        self.run.define_metric("*", step_metric="trainer/step")
        _record(run_dir, "wandb", {"id": self.run.id, "project": self.run.project, "mode": mode})
        where = Path(self.run.dir).parent
        say(f"wandb: {'continuing ' if previous else ''}{mode} run {self.run.id}"
            + (f"; upload it later with: wandb sync {where}" if mode == "offline" else f" in {self.run.project}"))

    def log_params(self, params: dict[str, Any]) -> None:
        self.run.config.update(params, allow_val_change=True)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.run.log({**metrics, "trainer/step": step})

    def log_artifacts(self, run_dir: Path, paths: list[Path]) -> None:
        """Each file copied into the W&B run's files (uploaded with it); plots also as images; summary.json's
        numbers into the run's summary."""
        images = {f"plots/{p.stem}": self.wandb.Image(str(p)) for p in paths if p.suffix == ".png"}
        if images:
            self.run.log(images)
        for path in paths:
            dest = Path(self.run.dir) / path.relative_to(run_dir)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
            self.run.save(str(dest), base_path=self.run.dir, policy="now")
            if path.name == "summary.json":
                self.run.summary.update(_summary_numbers(json.loads(path.read_text())))

    def close(self, status: str) -> None:
        self.run.summary["status"] = status
        self.run.finish(exit_code={"completed": 0, "interrupted": 130}.get(status, 1))


def _summary_numbers(summary: dict[str, Any]) -> dict[str, Any]:
    """summary.json's numbers, flat (`best/value`, `test/acc`), for W&B's run table."""
    out: dict[str, Any] = {}
    for k, v in summary.items():
        if isinstance(v, dict):
            out.update({key if "/" in key else f"{k}/{key}": x for key, x in v.items()
                        if isinstance(x, (int, float)) and not isinstance(x, bool)})
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = v
    return out
