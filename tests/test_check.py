import numpy as np
import pandas as pd
import soundfile as sf

from serkit.check import check_manifest, summarise


def test_check_reports_every_problem_by_name_and_never_stops(tmp_path, tone):
    rows = []
    good = tone("good.wav", seconds=1.0)
    rows.append(("good", good))
    (tmp_path / "junk.wav").write_bytes(b"garbage")
    rows.append(("junk", tmp_path / "junk.wav"))
    sf.write(str(tmp_path / "empty.wav"), np.zeros(0, np.float32), 16000)
    rows.append(("empty", tmp_path / "empty.wav"))
    sf.write(str(tmp_path / "silent.wav"), np.zeros(16000, np.float32), 16000)
    rows.append(("silent", tmp_path / "silent.wav"))
    sf.write(str(tmp_path / "nan.wav"), np.full(16000, np.nan, np.float32), 16000, subtype="FLOAT")
    rows.append(("nan", tmp_path / "nan.wav"))
    sf.write(str(tmp_path / "clip.wav"), np.sign(np.sin(np.arange(16000) / 5)).astype(np.float32), 16000)
    rows.append(("clip", tmp_path / "clip.wav"))
    rows.append(("short", tone("short.wav", seconds=0.1)))
    rows.append(("long", tone("long.wav", seconds=3.0)))
    rows.append(("missing", tmp_path / "missing.wav"))
    rows.append(("stereo44", tone("stereo.wav", seconds=1.0, sr=44100, channels=2)))
    df = pd.DataFrame({"id": [r[0] for r in rows], "path": [str(r[1]) for r in rows]})
    from serkit.check import CheckConfig

    rep = check_manifest(df, CheckConfig(max_seconds=2.0), progress=False).set_index("id")
    assert rep.loc["good", "problems"] == ""
    assert rep.loc["junk", "problems"] == "unreadable"
    assert rep.loc["empty", "problems"] == "empty"
    assert "silent" in rep.loc["silent", "problems"]
    assert "non-finite" in rep.loc["nan", "problems"]
    assert "clipped" in rep.loc["clip", "problems"]
    assert "too short" in rep.loc["short", "problems"]
    assert "too long" in rep.loc["long", "problems"]
    assert rep.loc["missing", "problems"] == "missing"
    assert rep.loc["stereo44", "problems"] == "" and "channels" in rep.loc["stereo44", "notes"]
    text = summarise(rep.reset_index())
    assert "junk.wav" in text and "with problems" in text
