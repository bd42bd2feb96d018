"""results.json says which serkit, which commit and which machine produced it."""

import re
import subprocess

from serkit import __version__
from serkit.provenance import git_commit, machine, provenance
from serkit.train.cv import run_cv
from tests.train.conftest import tiny_config


def test_git_commit_is_none_outside_a_checkout(tmp_path):
    assert git_commit(tmp_path) is None


def test_git_commit_names_head_of_a_checkout(tmp_path):
    run = lambda *a: subprocess.run(["git", "-C", str(tmp_path), *a], check=True, capture_output=True)
    run("init", "-q")
    (tmp_path / "f.txt").write_text("x")
    run("add", "f.txt")
    run("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "c")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()
    assert git_commit(tmp_path) == head
    (tmp_path / "f.txt").write_text("changed")
    assert git_commit(tmp_path) == head + "-dirty"


def test_results_json_records_version_commit_and_machine(tiny_corpus, tmp_path):
    summary = run_cv(tiny_config(tiny_corpus), tmp_path / "run", folds_only=[0], log=lambda *a: None)
    assert summary["serkit_version"] == __version__
    assert summary["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}(-dirty)?", summary["git_commit"])
    assert summary["machine"] == machine() and summary["machine"]["cores"] >= 1
    assert set(provenance()) == {"serkit_version", "git_commit", "machine"}
