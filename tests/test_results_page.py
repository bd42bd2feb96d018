"""docs/results.md is generated from the committed summaries; `serkit results add` summarises a run folder."""

import json
from pathlib import Path

import pytest

from serkit.cli import main
from serkit.errors import ConfigError
from serkit.results_page import (
    SINGLE_CLIP,
    SPEAKER_ADAPTIVE,
    encoder_regime,
    load_summaries,
    render,
    setting_of,
    summarise_run,
    track_of,
    wall_seconds_from_log,
)

ROOT = Path(__file__).resolve().parents[1]


def test_committed_results_page_is_what_the_committed_summaries_render():
    summaries = load_summaries(ROOT / "docs" / "results")
    assert summaries, "docs/results/ holds no summaries"
    page = (ROOT / "docs" / "results.md").read_text()
    assert render(summaries) == page, "docs/results.md is stale: run `serkit results page`"


def _fake_run(tmp_path: Path, name: str, normalisation: str, ua: list[float], corpus="emodb", extra=None) -> Path:
    run = tmp_path / name
    run.mkdir()
    (run / "config.yaml").write_text(f"name: {name}\ncorpus: {corpus}\n")
    mean = sum(ua) / len(ua)
    results = {
        "name": f"{corpus}-{name}", "recipe": "baseline", "task": "classification",
        "protocol": {"name": "speaker_kfold", "k": len(ua), "grouping": "sorted"}, "speaker_independent": True,
        "encoder": {"id": "openai/whisper-base"}, "feature_normalisation": normalisation,
        "folds": [{"fold": i, "metrics": {"ua": v, "wa": v}, "normalisation": {"mode": "none",
                                                                              "fallback_speakers": []}}
                  for i, v in enumerate(ua)],
        "mean": {"ua": mean, "wa": mean}, "std": {"ua": 0.01, "wa": 0.02},
        "precision": {"features": "fp32", "train": "32-true"}, "threads": [1], "wall_seconds": 12.5,
        **(extra or {}),
    }
    (run / "results.json").write_text(json.dumps(results))
    return run


def test_track_follows_test_speaker_statistics_then_normalisation():
    assert track_of({"feature_normalisation": "speaker: each speaker's frames ..."}) == SPEAKER_ADAPTIVE
    assert track_of({"feature_normalisation": "none"}) == SINGLE_CLIP
    assert track_of({"feature_normalisation": "speaker: ...", "test_speaker_statistics": "none"}) == SINGLE_CLIP
    auto = {"feature_normalisation": "auto: per fold ...",
            "folds": [{"normalisation": {"mode": "none", "fallback_speakers": []}}]}
    assert track_of(auto) == SINGLE_CLIP
    auto["folds"].append({"normalisation": {"mode": "speaker", "fallback_speakers": []}})
    assert track_of(auto) == SPEAKER_ADAPTIVE


def test_wall_time_comes_from_usr_bin_time_log(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("fold 0 ...\n\tElapsed (wall clock) time (h:mm:ss or m:ss): 1:02:03.5\n")
    assert wall_seconds_from_log(log) == 3723.5
    log.write_text("\tElapsed (wall clock) time (h:mm:ss or m:ss): 1:29.91\n")
    assert wall_seconds_from_log(log) == 89.9


def test_summary_of_a_run_folder(tmp_path):
    run = _fake_run(tmp_path, "spk", "speaker: z-scored per speaker", [0.9, 0.8, 0.7],
                    extra={"serkit_version": "9.9", "git_commit": "a" * 40, "machine": {"cpu": "X", "cores": 4}})
    (tmp_path / "spk.log").write_text("\tElapsed (wall clock) time (h:mm:ss or m:ss): 0:42.00\n")
    s = summarise_run(run, "serkit cv configs/emodb/baseline.yaml")
    assert s["track"] == SPEAKER_ADAPTIVE and s["corpus"] == "emodb" and s["metric"] == "ua"
    assert s["per_fold"] == [0.9, 0.8, 0.7] and s["mean"] == pytest.approx(0.8)
    assert (s["wall_seconds"], s["wall_of"]) == (42.0, "command")
    assert (s["serkit_version"], s["git_commit"], s["provenance_from"]) == ("9.9", "a" * 40, "results.json")
    (tmp_path / "spk.log").unlink()
    s = summarise_run(run, "serkit cv x.yaml")
    assert (s["wall_seconds"], s["wall_of"]) == (12.5, "folds")


def test_both_tracks_share_a_row_and_the_cli_writes_summaries_and_page(tmp_path, capsys):
    spk = _fake_run(tmp_path, "spk", "speaker: z-scored per speaker", [0.9, 0.8])
    glob = _fake_run(tmp_path, "glob", "none", [0.6, 0.5])
    tuned = _fake_run(tmp_path, "tuned", "none", [0.7, 0.6],
                      extra={"encoder": {"id": "e", "finetune": {"mode": "lora"}}})
    out = tmp_path / "summaries"
    commands = {spk: "serkit cv configs/emodb/mine.yaml", glob: "serkit cv configs/emodb/mine-single-clip.yaml",
                tuned: "serkit cv configs/emodb/mine-ft.yaml"}
    for run, command in commands.items():
        assert main(["results", "add", str(run), "--command", command, "--results-dir", str(out)]) == 0
    page = tmp_path / "results.md"
    assert main(["results", "page", "--results-dir", str(out), "--page", str(page)]) == 0
    text = page.read_text()
    assert "| recipe | encoder | setting | single clip: UA | speaker-adaptive: UA |" in text
    row = next(line for line in text.splitlines() if line.startswith("| baseline | frozen | mine |"))
    assert row.index("0.5500") < row.index("0.8500")  # single clip first, speaker-adaptive beside it
    row = next(line for line in text.splitlines() if line.startswith("| baseline | fine-tuned (lora) | mine-ft |"))
    assert "0.6500" in row and "0.5500" not in row  # a fine-tuned encoder gets its own row
    assert [encoder_regime({"encoder": {"finetune": f}}) for f in ("full", "top:2", {"mode": "frozen"}, None)] == [
        "fine-tuned (full)", "fine-tuned (top)", "frozen", "frozen"]
    assert "`serkit cv configs/emodb/mine-single-clip.yaml`" in text and "`serkit cv configs/emodb/mine.yaml`" in text
    assert [setting_of({"name": "n", "command": c}) for c in (
        "serkit cv configs/emodb/single-clip.yaml", "serkit cv configs/emodb/baseline.yaml --set a=1",
        "serkit cv configs/emodb/hcld-single-clip.yaml", "serkit cv configs/emodb/single-clip-nap.yaml",
        "serkit cv table.csv", "serkit ablate configs/emodb/hcld-ft.yaml --rows emotion_only --out d")] == [
        "baseline", "baseline", "hcld", "single-clip-nap", "n", "hcld-ft (emotion_only)"]


def test_a_table_experiment_is_filed_under_its_manifests_corpus(tmp_path):
    """`serkit cv TABLE.csv` writes no corpus key: the manifest's corpus column names it; without one, one line."""
    run = _fake_run(tmp_path, "tab", "none", [0.7, 0.8])
    table = tmp_path / "t.csv"
    table.write_text("id,path,emotion,speaker,corpus\na,a.wav,sad,s1,emodb\nb,b.wav,angry,s2,emodb\n")
    (run / "config.yaml").write_text(f"name: tab\ncorpus: null\nmanifest: {table}\n")
    assert summarise_run(run, "serkit cv t.csv", name="emodb-table")["corpus"] == "emodb"
    table.write_text("id,path,emotion,speaker\na,a.wav,sad,s1\n")
    with pytest.raises(ConfigError, match="no 'corpus' key, and no manifest"):
        summarise_run(run, "serkit cv t.csv")


def test_training_only_corpora_do_not_move_a_run_to_another_table(tmp_path):
    """A run on RAVDESS's folds with EmoDB as extra training data belongs in RAVDESS's table; a cross-corpus run
    keeps both names."""
    run = _fake_run(tmp_path, "plus", "none", [0.7, 0.8])
    (run / "config.yaml").write_text("name: plus\ncorpus: [ravdess, emodb]\n"
                                     "protocol: {name: speaker_kfold, training_only: [emodb]}\n")
    assert summarise_run(run, "serkit cv x.yaml")["corpus"] == "ravdess"
    (run / "config.yaml").write_text("name: plus\ncorpus: [ravdess, emodb]\nprotocol: {name: cross_corpus}\n")
    assert summarise_run(run, "serkit cv x.yaml")["corpus"] == "ravdess+emodb"

def test_a_folder_without_results_is_one_line_error(tmp_path, capsys):
    with pytest.raises(ConfigError, match="results.json"):
        summarise_run(tmp_path, "serkit cv x.yaml")
    assert main(["results", "add", str(tmp_path), "--command", "x"]) == 2
    assert "results.json" in capsys.readouterr().err


def test_a_multi_view_run_names_every_view_and_its_regime(tmp_path):
    """An IF-MVSE run records a list of encoders: the summary names them all (no traceback)."""
    views = [{"id": "openai/whisper-base", "name": "a"}, {"id": "fbank-80", "name": "b"}]
    run = _fake_run(tmp_path, "mv", "none", [0.7, 0.8], extra={"encoder": views})
    s = summarise_run(run, "serkit cv configs/tava/if-mvse-single-clip.yaml")
    assert s["encoder"] == "openai/whisper-base + fbank-80" and s["encoder_regime"] == "frozen"
    views[1]["finetune"] = {"mode": "top", "top_k": 1}
    run = _fake_run(tmp_path, "mv2", "none", [0.7, 0.8], extra={"encoder": views})
    assert summarise_run(run, "x")["encoder_regime"] == "fine-tuned (top)"
