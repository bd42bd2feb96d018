"""Nothing read from a run folder is unpickled: a planted pickle that would run code is refused with one line."""

from __future__ import annotations

import os

import pytest
import torch
import yaml

from serkit.cli import main
from serkit.errors import CheckpointError, SerkitError
from serkit.io import load_tensors
from serkit.train.cv import run_cv
from tests.train.conftest import model_dir, tiny_config  # noqa: F401  (fixture)


class _Payload:
    """Unpickling this calls ``os.system("touch MARKER")``: what a crafted checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant(path, marker) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": _Payload(marker), "epoch": 0}, path)


@pytest.fixture
def finished_run(tiny_corpus, tmp_path):
    """A finished one-fold run (its fold folder keeps best.ckpt and last.ckpt) and its config file."""
    cfg = tiny_config(tiny_corpus, train={"epochs": 2})
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    run_cv(cfg, tmp_path / "run", folds_only=[0], log=lambda *a: None)
    return tmp_path / "run", cfg_path


def _rerun_with(finished_run, tmp_path, name, capsys):
    out, cfg_path = finished_run
    (out / "fold0" / "result.json").unlink()  # the fold is to be (re)done from its checkpoints, in place
    marker = tmp_path / "MARKER"
    plant(out / "fold0" / "checkpoints" / name, marker)
    capsys.readouterr()
    rc = main(["cv", str(cfg_path), "--out", str(out), "--folds", "0"])
    err = capsys.readouterr().err.strip()
    return rc, err, marker


@pytest.mark.parametrize("name", ["last.ckpt", "best.ckpt"])
def test_planted_fold_checkpoint_is_refused_and_never_runs(finished_run, tmp_path, capsys, name):
    rc, err, marker = _rerun_with(finished_run, tmp_path, name, capsys)
    assert not marker.exists(), "the pickle ran"
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("serkit cv: error: ") and name in err
    assert "refused to load" in err and "Traceback" not in err


def test_planted_stage_checkpoint_is_refused_and_never_runs(tiny_corpus, tmp_path):
    """Every stage of a stage list (GMP-ATL's, IF-MVSE's) trains through the runner's train_module, which resumes
    with fit_resumable: a planted last.ckpt in a stage folder is refused the same way."""
    from serkit.config import load_config
    from serkit.protocols import make_folds
    from serkit.train.cv import feature_source
    from serkit.train.experiment import load_experiment_manifest
    from serkit.train.fit import train_module
    from serkit.train.stages import TrainStage

    cfg = load_config(tiny_config(tiny_corpus))
    manifest = load_experiment_manifest(cfg)
    store = feature_source(cfg, manifest, tmp_path, log=lambda *a: None)
    fold = make_folds(manifest, cfg["protocol"], seed=0)[0]
    stage_dir = tmp_path / "stage1-abc"
    marker = tmp_path / "MARKER"
    plant(stage_dir / "checkpoints" / "last.ckpt", marker)
    with pytest.raises(CheckpointError, match="last.ckpt: refused to load"):
        train_module(cfg, manifest, fold, store, stage_dir, stage=TrainStage("stage1", select="last"))
    assert not marker.exists()


def test_load_tensors_refuses_pickles_and_reads_plain_checkpoints(tmp_path):
    marker = tmp_path / "MARKER"
    plant(tmp_path / "evil.pt", marker)
    import pickle

    with open(tmp_path / "raw.pkl", "wb") as fh:  # a bare pickle, not torch's zip format
        pickle.dump({"state_dict": _Payload(marker)}, fh)
    for name in ("evil.pt", "raw.pkl"):
        with pytest.raises(CheckpointError) as exc:
            load_tensors(tmp_path / name)
        assert "\n" not in str(exc.value) and name in str(exc.value)
    (tmp_path / "cut.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match="not a readable torch file"):
        load_tensors(tmp_path / "cut.pt")
    assert not marker.exists()
    torch.save({"state_dict": {"w": torch.ones(2)}, "epoch": 3, "loops": {"a": [1, 2.0, "x", None]}},
               tmp_path / "ok.pt")
    assert load_tensors(tmp_path / "ok.pt")["epoch"] == 3


def test_torn_last_checkpoint_is_moved_aside_and_the_fold_ends_as_uninterrupted(finished_run, tmp_path, capsys):
    """A last.ckpt cut short (a kill while it was written) is set aside with a note; the phase trains from its
    start and the fold ends with the uninterrupted run's predictions."""
    out, cfg_path = finished_run
    want = (out / "fold0" / "predictions.csv").read_text()
    (out / "fold0" / "result.json").unlink()
    (out / "fold0" / "finished.json").unlink(missing_ok=True)
    last = out / "fold0" / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:100])  # torn
    assert main(["cv", str(cfg_path), "--out", str(out), "--folds", "0"]) == 0
    assert list((out / "fold0" / "checkpoints").glob("last.torn-*.ckpt"))
    assert (out / "fold0" / "predictions.csv").read_text() == want


def test_garbage_onnx_graph_is_one_line(model_dir, tmp_path, capsys):  # noqa: F811
    pytest.importorskip("onnxruntime")
    (model_dir / "model.onnx").write_bytes(b"not a graph at all")
    from serkit.inference.onnx import OnnxRecognizer

    with pytest.raises(SerkitError, match="onnxruntime cannot load this graph") as e:
        OnnxRecognizer.from_folder(model_dir)
    assert "\n" not in str(e.value) and "model.onnx" in str(e.value)


def test_onnx_graph_reading_data_outside_its_folder_is_one_line(model_dir):  # noqa: F811
    """A crafted graph whose external-data path leaves the model folder: refused by onnxruntime, one line here."""
    onnx = pytest.importorskip("onnx")
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from serkit.inference.onnx import OnnxRecognizer

    w = numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], [w])
    model = helper.make_model(graph)
    onnx.external_data_helper.convert_model_to_external_data(model, location="../outside.bin", size_threshold=0)
    (model_dir.parent / "outside.bin").write_bytes(np.ones((2, 2), np.float32).tobytes())
    (model_dir / "model.onnx").write_bytes(model.SerializeToString())
    with pytest.raises(SerkitError, match="onnxruntime cannot load this graph") as e:
        OnnxRecognizer.from_folder(model_dir)
    assert "\n" not in str(e.value)
