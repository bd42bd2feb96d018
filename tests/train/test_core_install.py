"""A core install (no [train] extra) predicts: `serkit predict` and `serkit info` run with Lightning, matplotlib and
scikit-learn not importable, and a command that needs them says in one line which extra to install."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib

import pytest

from tests.conftest import REPO, SHARED
from tests.train.conftest import tiny_config

#: What the [train] extra brings and a core install lacks.
TRAINING_ONLY = ("lightning", "matplotlib", "scikit-learn")
#: Run `serkit ARGS` as if those were not installed: the path finder finds none of their modules, as on a machine
#: without them (find_spec returns None, import raises ModuleNotFoundError).
WITHOUT_TRAINING_LIBRARIES = """
import runpy, sys
from importlib.machinery import PathFinder
HIDDEN = ("lightning", "pytorch_lightning", "lightning_fabric", "torchmetrics", "matplotlib", "sklearn")
class WithoutTraining(PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        return None if name.partition(".")[0] in HIDDEN else PathFinder.find_spec(name, path, target)
sys.meta_path[:] = [WithoutTraining if f is PathFinder else f for f in sys.meta_path]
sys.argv = ["serkit", *sys.argv[1:]]
runpy.run_module("serkit.cli", run_name="__main__")
"""


def serkit_core(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)]), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", WITHOUT_TRAINING_LIBRARIES, *args], capture_output=True, text=True,
                          env=env, timeout=timeout, check=False)


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.split(r"[<>=!~;\[ ]", requirement)[0]).lower()


def test_core_dependencies_leave_out_the_training_libraries():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = {_name(d) for d in project["dependencies"]}
    train = {_name(d) for d in project["optional-dependencies"]["train"]}
    assert not core & set(TRAINING_ONLY), f"core dependencies include {sorted(core & set(TRAINING_ONLY))}"
    assert set(TRAINING_ONLY) <= train
    assert {"torch", "transformers", "safetensors", "soundfile", "soxr", "silero-vad"} <= core  # prediction's own
    setup = (REPO / "scripts" / "setup.sh").read_text()
    extras = re.search(r'^EXTRAS="([^"]+)"', setup, re.MULTILINE).group(1).split(",")
    assert "train" in extras and "dev" in extras  # the team's set-up (and the suite) installs the training side


def test_the_hiding_wrapper_hides_the_training_libraries():
    proc = serkit_core("--version")
    assert proc.returncode == 0, proc.stderr
    code = WITHOUT_TRAINING_LIBRARIES.split("sys.argv")[0] + "import sklearn\n"
    hidden = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert hidden.returncode != 0 and "No module named 'sklearn'" in hidden.stderr


def test_predict_and_info_run_without_the_training_libraries(model_dir, tiny_corpus):
    clip = tiny_corpus / "spk0" / "high_0.wav"
    proc = serkit_core("predict", str(model_dir), str(clip), "--format", "json", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    (result,) = json.loads(proc.stdout)
    assert result["label"] in ("high", "low", "mid") and "error" not in result
    info = serkit_core("info", str(model_dir), "--json")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["classes"] == ["high", "low", "mid"]


@pytest.mark.skipif(not (SHARED / "hf-cache").is_dir() or not os.environ.get("HF_HUB_CACHE"),
                    reason="needs openai/whisper-base in the Hugging Face cache")
def test_the_shipped_model_predicts_a_clip_without_the_training_libraries(tmp_path):
    from tests.conftest import write_tone

    clip = write_tone(tmp_path / "clip.wav", seconds=1.5)
    proc = serkit_core("predict", str(clip), "--format", "csv", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    header, row = proc.stdout.strip().splitlines()
    labels = json.loads((REPO / "src" / "serkit" / "default_model" / "labels.json").read_text())["classes"]
    assert dict(zip(header.split(","), row.split(","), strict=True))["label"] in labels


def test_a_training_command_names_the_extra_in_one_line(tiny_corpus, tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(json.dumps(tiny_config(tiny_corpus)))
    for command in (["cv", str(cfg), "--out", str(tmp_path / "run")],
                    ["train", str(cfg), "--out", str(tmp_path / "m")]):
        proc = serkit_core(*command)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        (line,) = proc.stderr.strip().splitlines()
        assert line.startswith(f"serkit {command[0]}: error: needs ") and "pip install 'serkit[train]'" in line


def test_missing_extra_knows_only_the_optional_dependencies():
    from serkit.errors import missing_extra

    assert "serkit[serve]" in missing_extra(ModuleNotFoundError("No module named 'fastapi'", name="fastapi"))
    assert "serkit[train]" in missing_extra(ImportError("Missing optional dependency 'pyarrow'.  Use pip or conda"))
    assert missing_extra(ModuleNotFoundError("No module named 'numpy'", name="numpy")) is None
