"""Pre-mixed variants: rendered files are a function of (seed, variant id), whatever the order or subset rendered."""

import zlib

import numpy as np
import pandas as pd

from serkit.audio import content_hash, read_audio
from serkit.augment.variants import build_mixup, plan_variants, render_variants
from serkit.protocols import make_folds


def _manifest(speakers=6, per=4):
    rows = [{"id": f"s{s}_{u}", "path": f"s{s}_{u}", "speaker": f"s{s}", "gender": "female", "emotion": "abc"[u % 3]}
            for s in range(speakers) for u in range(per)]
    return pd.DataFrame(rows)


def _read(path: str) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(path.encode()))
    return (0.1 * rng.standard_normal(int(rng.integers(4000, 9000)))).astype(np.float32)


def _hashes(table: pd.DataFrame) -> dict[str, str]:
    """Content hashes of the rendered files (what the variant store keys its entries by)."""
    return {i: content_hash(p) for i, p in zip(table["id"], table["path"], strict=True)}


def test_rendering_does_not_depend_on_order_or_subset(tmp_path):
    man = _manifest()
    folds = make_folds(man, {"name": "speaker_kfold", "k": 3, "val_speakers": 1}, seed=0)
    mixup = build_mixup("eam", snr_db=(-5, 10))
    plan = plan_variants(man, folds, k=2, seed=4)
    full = render_variants(plan, man, mixup, tmp_path / "a", seed=4, read=_read)
    part = plan.iloc[::-3].reset_index(drop=True)  # another order, a third of the variants
    again = render_variants(part, man, mixup, tmp_path / "b", seed=4, read=_read)
    h_full, h_part = _hashes(full), _hashes(again)
    assert len(h_part) == len(part) and all(h_part[i] == h_full[i] for i in h_part)
    lam = full.set_index("id")["lam"]
    assert np.array_equal(again.set_index("id")["lam"].to_numpy(), lam[again["id"]].to_numpy())
    assert (lam > 0).any()
    first = full.iloc[0]
    assert len(read_audio(first["path"])) == round(first["duration"] * 16000)
    other = render_variants(plan, man, mixup, tmp_path / "c", seed=5, read=_read)
    assert _hashes(other) != h_full  # the seed matters
