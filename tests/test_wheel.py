"""A wheel built from the repo works on its own: conf/ ships inside it, `dl` runs from any directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from conftest import REPO


def test_wheel_in_fresh_venv_runs_help_and_train(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(REPO)], check=True, capture_output=True, timeout=300)
    wheel = next(dist.glob("dlcli-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "dlcli/conf/config.yaml" in names and "dlcli/conf/model/cnn.yaml" in names
    assert "dlcli/conf/dataset/auto/mlp.yaml" in names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # Reuse this interpreter's dependencies (torch, hydra...) without its own dlcli: a .pth line adds the path
    # but, unlike a site dir, does not run the editable-install hooks found there.
    outer = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site) / "outer.pth").write_text("\n".join(sorted(outer)) + "\n")
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   capture_output=True, timeout=300)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DL_DEBUG")}
    where = subprocess.run([py, "-c", "import dlcli; print(dlcli.__file__)"], cwd=elsewhere, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert str(venv) in where, where
    dl = venv / "bin" / "dl"
    assert "train" in subprocess.run([dl, "--help"], cwd=elsewhere, env=env, capture_output=True, text=True,
                                     check=True).stdout
    res = subprocess.run([dl, "train", "trainer.epochs=1", "trainer.plots=false"], cwd=elsewhere, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    runs = list((elsewhere / "outputs" / "runs").glob("*_mlp_spirals"))
    assert len(runs) == 1 and (runs[0] / "checkpoints" / "best.pt").is_file()
    assert json.loads((runs[0] / "run.json").read_text())["status"] == "completed"
