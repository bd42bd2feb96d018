"""A quiet, conventional command line: --root on cv / train, corpus sources in prepare, broken pipes, no
third-party progress bars."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from serkit.cli import main
from serkit.corpora import available, get_reader

ROOT = Path(__file__).resolve().parents[1]


def test_every_corpus_reader_names_its_source():
    for name in available():
        assert get_reader(name).SOURCE, name
    assert "zenodo.org/records/1188976" in get_reader("ravdess").SOURCE


def test_prepare_help_lists_where_each_corpus_comes_from(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["prepare", "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    for name in available():
        assert f"  {name} " in out and get_reader(name).SOURCE in out


def test_prepare_without_a_root_says_where_to_get_the_corpus(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("SERKIT_DATA", raising=False)
    assert main(["prepare", "ravdess", "--out", str(tmp_path / "r.csv")]) == 2
    err = capsys.readouterr().err
    assert "--root" in err and "zenodo.org/records/1188976" in err and "Traceback" not in err
    assert main(["prepare", "emodb", "--root", str(tmp_path), "--out", str(tmp_path / "e.csv")]) == 2
    assert "emodb.bilderbar.info" in capsys.readouterr().err  # an empty folder: the layout and the source


@pytest.mark.parametrize("command", ["cv", "train"])
def test_root_option_names_the_corpus_folder_of_a_config(command, tmp_path, capsys):
    missing = tmp_path / "no-such-emodb"
    rc = main([command, str(ROOT / "configs" / "emodb" / "baseline.yaml"), "--root", str(missing),
               "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and str(missing) in err and "emodb.bilderbar.info" in err


def test_root_option_is_refused_for_a_table(tmp_path, capsys):
    table = tmp_path / "t.csv"
    table.write_text("path,emotion\na.wav,angry\n")
    assert main(["cv", str(table), "--root", str(tmp_path)]) == 2
    assert "--root" in capsys.readouterr().err


def test_a_closed_stdout_ends_quietly(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = ["results", "page", "--results-dir", str(ROOT / "docs" / "results"), "--page", str(tmp_path / "r.md")]
    proc = subprocess.Popen([sys.executable, "-m", "serkit.cli", *command], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # the reader goes away before serkit writes (as `| head -1` does after its line)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert "Traceback" not in err and "BrokenPipeError" not in err


def test_loading_an_encoder_shows_no_progress_bar(tmp_path, capfd):
    import transformers

    from serkit.encoders.registry import load_encoder
    from tests.encoders.tiny import tiny_config

    transformers.WhisperForAudioClassification(tiny_config("whisper")).save_pretrained(str(tmp_path / "w"))
    transformers.WhisperFeatureExtractor(feature_size=80).save_pretrained(str(tmp_path / "w"))
    capfd.readouterr()
    before = transformers.utils.logging.is_progress_bar_enabled()
    load_encoder(str(tmp_path / "w"))
    err = capfd.readouterr().err
    assert "Loading weights" not in err
    assert transformers.utils.logging.is_progress_bar_enabled() == before  # the user's setting is left as it was
