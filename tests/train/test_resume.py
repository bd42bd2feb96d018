"""A CV killed with SIGKILL during a fold and during a refit, then resumed, gives the uninterrupted run's numbers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

from serkit.train.cv import run_cv
from tests.train.conftest import tiny_config

REPO = Path(__file__).resolve().parents[2]
#: The fold that is killed twice: its validation score still improves after epoch 0, so its refit has epochs
FOLD = 1

#: Runs `serkit cv` in a fresh process that SIGKILLs itself (no clean-up of any kind) at one training batch of
#: one run folder: the kill point is exact, the death is as abrupt as `kill -9` from outside.
KILLER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from serkit.cli import main
    from serkit.train.module import SERModule

    where, epoch, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
    original = SERModule.on_train_batch_start

    def on_train_batch_start(self, b, batch_idx):
        original(self, b, batch_idx)
        run_dir = Path(self.trainer.logger.save_dir)
        e = self.trainer.max_epochs - 1 if epoch == "last" else int(epoch)
        if str(run_dir).endswith(where) and self.current_epoch == e and batch_idx == batch:
            os.kill(os.getpid(), signal.SIGKILL)

    SERModule.on_train_batch_start = on_train_batch_start
    sys.exit(main(sys.argv[4:]))
""")


def _killed_run(cfg_path, out, where, epoch, batch):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    p = subprocess.run([sys.executable, "-c", KILLER, where, str(epoch), str(batch), "cv", str(cfg_path),
                        "--out", str(out), "--folds", str(FOLD)], env=env, capture_output=True, text=True, timeout=300,
                       check=False)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]


def _figures(out):
    res = json.loads((out / "results.json").read_text())
    folds = [{k: v for k, v in f.items() if k != "resumed"} for f in res["folds"]]
    return folds, res["mean"], res["std"], (out / f"fold{FOLD}" / "predictions.csv").read_bytes()


def test_sigkilled_cv_with_dropout_resumes_to_the_uninterrupted_result(tiny_corpus, tmp_path):
    cfg = tiny_config(tiny_corpus, model={"dropout": 0.3}, train={"epochs": 5, "patience": 2, "refit": True})
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    reference = tmp_path / "reference"
    run_cv(cfg, reference, folds_only=[FOLD], log=lambda *a: None)
    ref = json.loads((reference / "results.json").read_text())
    refit_epochs = json.loads((reference / f"fold{FOLD}" / "result.json").read_text())["refit_epochs"]
    assert refit_epochs >= 2, "the refit must have an epoch to resume after"

    out = tmp_path / "killed"
    _killed_run(cfg_path, out, f"fold{FOLD}", 2, 1)  # during the fold's search, in epoch 2
    assert not (out / f"fold{FOLD}" / "result.json").exists()
    assert (out / f"fold{FOLD}" / "checkpoints" / "last.ckpt").exists()
    moved = tmp_path / "moved"  # the run folder is copied elsewhere (shared, downloaded) before it resumes
    shutil.move(out, moved)
    out = moved
    _killed_run(cfg_path, out, f"fold{FOLD}/refit", "last", 1)  # during the fold's refit, in its last epoch
    assert (out / f"fold{FOLD}" / "refit" / "checkpoints" / "last.ckpt").exists()
    assert not (out / f"fold{FOLD}" / "result.json").exists()
    run_cv(cfg_path, out, folds_only=[FOLD], log=lambda *a: None)

    assert _figures(out) == _figures(reference)
    assert all(f["resumed"] == [] for f in ref["folds"])
    res = json.loads((out / "results.json").read_text())
    search, refit = res["folds"][0]["resumed"]  # which phase resumed, after which epoch
    assert (search["phase"], search["epoch"], refit["phase"]) == ("search", 1, "refit")
    assert refit["epoch"] == refit_epochs - 2


def test_last_checkpoint_is_the_last_epoch(tiny_corpus, tmp_path):
    from serkit.io import load_tensors

    cfg = tiny_config(tiny_corpus, train={"epochs": 5, "patience": 10})
    run_cv(cfg, tmp_path / "run", folds_only=[0], log=lambda *a: None)
    ck = tmp_path / "run" / "fold0" / "checkpoints"
    assert load_tensors(ck / "last.ckpt")["epoch"] == 4
    best = json.loads((tmp_path / "run" / "fold0" / "result.json").read_text())["best_epoch"]
    assert load_tensors(ck / "best.ckpt")["epoch"] == best
