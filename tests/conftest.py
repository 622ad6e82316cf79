"""Shared test helpers: run the real CLI in a subprocess, in each test's own tmp dir."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("DL_DATA_DIR") or REPO.parent / "shared" / "data").resolve()
HAS_MNIST = (DATA_DIR / "mnist" / "train-images-idx3-ubyte.gz").is_file()
needs_mnist = pytest.mark.skipif(not HAS_MNIST, reason=f"MNIST not under {DATA_DIR} (set DL_DATA_DIR)")

# Test-only fault injection (DL_TEST_* variables, tests/hooks/dl_test_hooks.py) from outside dl: in this process, and
# in every dl process a test starts (Python runs tests/hooks/sitecustomize.py at start-up from PYTHONPATH).
HOOKS = REPO / "tests" / "hooks"
os.environ["PYTHONPATH"] = os.pathsep.join([str(HOOKS), *filter(None, [os.environ.get("PYTHONPATH")])])
sys.path.insert(0, str(HOOKS))
import dl_test_hooks  # noqa: E402

dl_test_hooks.install()

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One worker per core (pytest-xdist): in-process torch work takes one thread, as the CLI subprocesses do.
    import torch

    torch.set_num_threads(1)

# Tiny, fast settings for end-to-end runs on 2 CPU cores.
FAST = ["trainer.summary=false", "trainer.plots=false"]


class CLI:
    def __init__(self, cwd: Path):
        self.cwd = cwd

    def __call__(self, *args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
        full_env = {k: v for k, v in os.environ.items() if k != "DL_DEBUG"}
        # one intra-op thread: the tests' tiny models run faster without thread hand-offs (2.4x on a busy 2-core box)
        full_env.update({"DL_DATA_DIR": str(DATA_DIR), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
                         **(env or {})})
        return subprocess.run([sys.executable, "-m", "dlcli", *args], cwd=self.cwd, env=full_env,
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def ok(self, *args: str, **kw) -> subprocess.CompletedProcess:
        res = self(*args, **kw)
        assert res.returncode == 0, f"dl {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
        return res

    def runs(self) -> list[Path]:
        return sorted((self.cwd / "outputs" / "runs").glob("*"))

    def last_run(self) -> Path:
        runs = self.runs()
        assert runs, "no run directory was made"
        return runs[-1]


class InProcessCLI(CLI):
    """The same `dl` command, run inside the test process: no ~2 s interpreter + torch start per call. For the many
    cases that end before any training (user errors); a few of them also run in a real process (test_errors)."""

    def __call__(self, *args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
        from dlcli.commands.cli import app

        saved_env, saved_cwd, code = dict(os.environ), os.getcwd(), 0
        root = logging.getLogger()
        saved_handlers, saved_level = list(root.handlers), root.level
        out, err = io.StringIO(), io.StringIO()
        os.environ.pop("DL_DEBUG", None)
        os.environ.update({"DL_DATA_DIR": str(DATA_DIR), **(env or {})})
        os.chdir(self.cwd)
        try:
            with redirect_stdout(out), redirect_stderr(err):
                app(args=list(args), prog_name="dl")
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        finally:
            os.chdir(saved_cwd)
            os.environ.clear()
            os.environ.update(saved_env)
            for handler in root.handlers[:]:  # Hydra's train.log handler: not this test process's to keep
                if handler not in saved_handlers:
                    root.removeHandler(handler)
                    handler.close()
            root.setLevel(saved_level)
        return subprocess.CompletedProcess(["dl", *args], code, out.getvalue(), err.getvalue())


@pytest.fixture
def dl(tmp_path: Path) -> CLI:
    return CLI(tmp_path)


@pytest.fixture
def dl_inproc(tmp_path: Path) -> InProcessCLI:
    return InProcessCLI(tmp_path)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def trained_once(tmp_path_factory, group: str, name: str, *args: str, text: str | None = None) -> Path:
    """A tiny run trained once per test session and shared by the xdist workers (a file lock: the first one trains
    it); `text`: written to corpus.txt in its dir and given as dataset.path."""
    from filelock import FileLock  # torch's own dependency

    uid = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    base = tmp_path_factory.getbasetemp()
    root = base.parent / f"{group}-{uid}" if uid else base / group
    (root / name).mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f"{name}.lock")):
        done = root / name / "run.txt"
        if not done.is_file():
            cli = CLI(root / name)
            if text is not None:
                (cli.cwd / "corpus.txt").write_text(text)
                args = (*args, f"dataset.path={cli.cwd / 'corpus.txt'}")
            cli.ok("train", *args, *FAST)
            done.write_text(str(cli.last_run()))
        return Path(done.read_text())
