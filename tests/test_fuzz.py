"""Hostile input, generated (Hypothesis) rather than listed: for every key of the schema, values out of range, of the
wrong type, NaN/inf, huge; and NaN/inf/text for every number any built-in config holds. The contract for each: exit 2,
one `error:` line naming the key, no traceback, no run or sweep directory left behind."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pytest
from conftest import FAST, InProcessCLI
from hydra import compose, initialize_config_module
from hypothesis import HealthCheck, given, settings, strategies as st
from omegaconf import DictConfig, ListConfig, OmegaConf

from dlcli.config.schema import SCHEMA, Number

CONTEXTS = [[], ["optimizer=sgd"], ["optimizer=rmsprop"], ["optimizer=adagrad"], ["scheduler=step"],
            ["scheduler=plateau"], ["scheduler=onecycle"], ["scheduler=linear"], ["model=lstm"], ["model=cnn"],
            ["model=transformer"], ["model=skipgram"], ["model=attention"], ["dataset=image_folder"]]

with initialize_config_module(config_module="dlcli.conf", version_base="1.3"):
    COMPOSED = [(c, compose("config", overrides=c)) for c in CONTEXTS]


def context_for(key: str) -> list[str]:
    """The group choices under which `key` exists (optimizer.momentum: optimizer=sgd)."""
    return next(c for c, cfg in COMPOSED if OmegaConf.select(cfg, key, default="__absent__") != "__absent__")


def numeric_leaves() -> list[tuple[list[str], str]]:
    """(context, key) for every number a built-in config holds (hydra's own keys aside)."""
    found: dict[str, list[str]] = {}

    def walk(node: object, prefix: str, context: list[str]) -> None:
        if isinstance(node, DictConfig):
            for k in node.keys():
                try:
                    walk(node[k], f"{prefix}{k}.", context)
                except Exception:  # an interpolation that needs a run (hydra:...): not a user's number
                    pass
        elif isinstance(node, (int, float)) and not isinstance(node, bool) and not isinstance(node, ListConfig):
            found.setdefault(prefix[:-1], context)

    for context, cfg in COMPOSED:
        walk(cfg, "", context)
    return sorted((c, k) for k, c in found.items())


def _fmt(x: float) -> str:
    return repr(int(x)) if float(x).is_integer() and abs(x) < 1e18 else repr(float(x))


def bad_values(rule: Number) -> st.SearchStrategy[str]:
    """Override values the rule must refuse, as a user would type them."""
    options = [st.sampled_from(["abc", "nan", "inf", "-inf", "true", "{a:1}"] + ([] if rule.null else ["null"]))]
    if rule.length is None:
        options.append(st.just("[1,2]"))
        if rule.low is not None:
            below = st.floats(min_value=1e-6, max_value=1e12).map(lambda d: rule.low - d)
            options.append((below.map(math.floor) if rule.integer else below).map(_fmt))
            if rule.low_open:
                options.append(st.just(_fmt(rule.low)))
        if rule.high is not None:
            above = st.floats(min_value=1e-6, max_value=1e12).map(lambda d: rule.high + d)
            options.append((above.map(math.ceil) if rule.integer else above).map(_fmt))
            if rule.high_open:
                options.append(st.just(_fmt(rule.high)))
        if rule.integer:
            options.append(st.just(_fmt((rule.low or 0) + 1.5)))
    else:
        options.append(st.just("[" + ",".join(["0.5"] * (rule.length + 1)) + "]"))
        options.append(st.floats(min_value=1.0, max_value=1e6).map(lambda x: f"[{x!r},0.5]"))
        options.append(st.floats(min_value=1e-6, max_value=1e6).map(lambda x: f"[0.5,{-x!r}]"))
    return st.one_of(options)


def assert_refused(args: list[str], key: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        res = InProcessCLI(Path(tmp))("train", *args, *FAST)
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert res.returncode == 2, (args, res.returncode, res.stderr[-2000:])
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, res.stderr[-2000:])
        assert key in lines[0], (args, lines[0])
        assert "Traceback" not in res.stdout + res.stderr
        outputs = Path(tmp) / "outputs"
        assert not outputs.exists() or not list(outputs.glob("*/*")), (args, "a refused start left a directory")


FUZZ = settings(max_examples=45, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


@FUZZ
@given(data=st.data())
def test_every_schema_key_refuses_values_out_of_its_range(data):
    key = data.draw(st.sampled_from(sorted(SCHEMA)), label="key")
    value = data.draw(bad_values(SCHEMA[key]), label="value")
    assert_refused([*context_for(key), f"{key}={value}"], key)


@FUZZ
@given(data=st.data())
def test_every_number_in_a_config_refuses_nan_inf_and_text(data):
    context, key = data.draw(st.sampled_from(numeric_leaves()), label="key")
    value = data.draw(st.sampled_from(["nan", "inf", "-inf", "abc"]), label="value")
    assert_refused([*context, f"{key}={value}"], key)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(key=st.sampled_from(sorted(SCHEMA)), x=st.floats(allow_nan=False, allow_infinity=False, width=32))
def test_the_schema_accepts_exactly_its_range(key, x):
    """Number.problem against the range written out by hand: inside accepted, outside refused."""
    rule = SCHEMA[key]
    value = round(x) if rule.integer else x
    inside = ((rule.low is None or (value > rule.low if rule.low_open else value >= rule.low))
              and (rule.high is None or (value < rule.high if rule.high_open else value <= rule.high)))
    given_value = [value] * rule.length if rule.length else value
    assert (rule.problem(given_value) is None) == inside, (key, value, rule.describe())


def test_the_fuzzed_keys_cover_the_schema_and_the_configs():
    assert all(context_for(k) is not None for k in SCHEMA)
    keys = {k for _, k in numeric_leaves()}
    assert {"optimizer.lr", "trainer.epochs", "model.hidden_size", "scheduler.warmup"} <= keys, keys


@pytest.mark.parametrize("value,expected", [
    ("trainer.clip_grad_norm=-1", "trainer.clip_grad_norm=-1: must be a number > 0, or null"),
    ("loss.label_smoothing=1.5", "loss.label_smoothing=1.5: must be a number in [0, 1)"),
    ("optimizer.betas=[1.5,0.9]", "optimizer.betas=[1.5,0.9]: must be a list of 2 numbers, each in [0, 1)"),
    ("optimizer.lr=inf", "optimizer.lr=inf: must be a number > 0"),
    ("trainer.early_stopping_patience=-1", "must be an integer >= 1, or null"),
])
def test_the_messages_say_the_range(value, expected):
    with tempfile.TemporaryDirectory() as tmp:
        res = InProcessCLI(Path(tmp))("train", value, *FAST)
    assert res.returncode == 2 and expected in res.stderr


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=8)
RUN_KEYS = ["status", "started", "ended", "model", "dataset", "pid", "host", "resumed", "versions", "command",
            "error", "seed", "device"]
SUMMARY_KEYS = ["best", "epochs", "steps", "final", "test", "wall_time_s", "params", "stopped_by"]


def records(keys: list[str]) -> st.SearchStrategy:
    """A record with dl's own field names holding anything, or any JSON at all."""
    return st.one_of(st.dictionaries(st.sampled_from(keys), JSON, max_size=len(keys)), JSON)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(run=records(RUN_KEYS), summary=records(SUMMARY_KEYS))
def test_dl_runs_lists_what_it_can_whatever_a_run_json_holds(run, summary):
    """A run.json / summary.json edited by hand or broken: `dl runs`, `--json`, `show` and `compare` still answer."""
    import json

    with tempfile.TemporaryDirectory() as tmp:
        good, bad = Path(tmp) / "outputs" / "runs" / "good", Path(tmp) / "outputs" / "runs" / "bad"
        for d in (good, bad):
            d.mkdir(parents=True)
        (good / "run.json").write_text(json.dumps({"status": "completed", "model": "mlp", "dataset": "spirals"}))
        (bad / "run.json").write_text(json.dumps(run))
        (bad / "summary.json").write_text(json.dumps(summary))
        dl = InProcessCLI(Path(tmp))
        for args in (["runs"], ["runs", "--json"], ["runs", "show", str(bad)], ["runs", "compare", str(bad), str(good)]):
            res = dl(*args)
            assert "Traceback" not in res.stdout + res.stderr, (args, res.stderr[-1500:])
            assert res.returncode in (0, 2), (args, res.returncode, res.stderr[-1500:])
        assert "good" in dl("runs").stdout


def test_train_help_prints_every_range():
    with tempfile.TemporaryDirectory() as tmp:
        res = InProcessCLI(Path(tmp))("train", "--help")
    assert res.returncode == 0 and "== Value ranges" in res.stdout
    for key, rule in SCHEMA.items():
        assert f"{key} " in res.stdout and rule.describe() in res.stdout
