"""Lightning DDP with two CPU processes (gloo): ``serkit cv --set train.devices=2 train.strategy=ddp``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import yaml

from tests.train.conftest import tiny_config, tiny_corpus  # noqa: F401


def test_cv_under_ddp_on_two_cpu_processes(tiny_corpus, tmp_path):  # noqa: F811
    """Lightning's subprocess launcher re-runs the command for rank 1, so the run goes through the CLI. Both ranks
    train one model (gradients averaged), validation metrics are computed over both ranks' shards, and the fold
    scores the same test set on each rank."""
    cfg = tiny_config(tiny_corpus, train={"epochs": 2, "accelerator": "cpu", "devices": 2, "strategy": "ddp"})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "serkit.cli", "cv", str(path), "--out", str(tmp_path / "run"),
                           "--folds", "0"], capture_output=True, text=True, env=env, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert len(res["folds"]) == 1 and res["folds"][0]["n_test"] == 24 and 0 <= res["mean"]["ua"] <= 1
    assert proc.stdout.count("fold 0: test ua") == 2  # one line per rank
