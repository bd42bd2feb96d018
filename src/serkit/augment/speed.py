"""Speed perturbation: copies of every utterance played faster or slower, extracted once into a feature store.

Playing a clip at ``factor`` times its speed scales its duration by ``1 / factor`` and every frequency by
``factor``: pitch and formants move together, as they do between speakers with shorter or longer vocal tracts. The
copies are new "speakers" for the emotion head to see in training (``features.speed_perturb: [0.9, 1.1]``), the
augmentation of Ko et al. (Interspeech 2015) that Kaldi and ESPnet apply to speech recognisers.

Honesty rule: a fold trains on the copies of its own training utterances only (:func:`fold_speed_variants`); a
copy of a validation or test utterance never reaches training. A copy carries its parent's labels and speaker, so
speaker statistics (``features.normalize: speaker``) are the parent's, computed from real utterances.

Functions:
    :func:`speed_perturb` (one waveform), :func:`plan_speed_variants` (the copies, no audio),
    :func:`render_speed_variants` (write their audio), :func:`ensure_speed_store` (plan + render + extract into
    the corpus's store of copies, :func:`speed_store_dir`; resumable), :func:`fold_speed_variants` (the copies a
    fold may train on).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from serkit.config import check_factors
from serkit.constants import SAMPLE_RATE

__all__ = ["check_factors", "ensure_speed_store", "fold_speed_variants", "plan_speed_variants",
           "render_speed_variants", "speed_perturb", "speed_store_dir", "speed_store_key"]


def speed_perturb(wave: np.ndarray, factor: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``wave`` (samples,) played at ``factor`` times its speed, at the same ``sample_rate``: about
    ``len(wave) / factor`` float32 samples, every frequency times ``factor`` (soxr's high-quality resampler)."""
    import soxr

    x = np.asarray(wave, dtype=np.float32)
    return soxr.resample(x, sample_rate * float(factor), sample_rate, quality="HQ").astype(np.float32)


def _variant_id(parent: str, factor: float) -> str:
    return f"{parent}~speed{factor:g}"


def plan_speed_variants(manifest: pd.DataFrame, factors) -> pd.DataFrame:
    """One row per ``(utterance, factor)``: the parent's manifest row (labels, speaker, gender, ...) with ``id``
    ``<parent>~speed<factor>``, ``parent`` and ``factor``; the parent's ``path`` and ``duration`` are replaced
    when the audio is rendered."""
    df = manifest.assign(id=manifest["id"].astype(str)).reset_index(drop=True)
    parts = []
    for f in check_factors(list(factors)):
        part = df.copy()
        part["parent"] = part["id"]
        part["factor"] = f
        part["id"] = [_variant_id(u, f) for u in part["parent"]]
        parts.append(part)
    if not parts:
        return df.iloc[:0].assign(parent=[], factor=[])
    return pd.concat(parts, ignore_index=True)


def render_speed_variants(plan: pd.DataFrame, out_dir: str | Path, read=None) -> pd.DataFrame:
    """Write every planned copy as a float32 16 kHz AU file under ``out_dir``; returns ``plan`` with the copies'
    ``path`` and ``duration`` (s). Deterministic: the same parent and factor always give the same samples."""
    import soundfile as sf

    from serkit.audio import read_audio

    read = read or read_audio
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = plan.copy()
    paths, durations = [], []
    for parent, sub in plan.groupby("parent", sort=False):  # one read per parent
        wave = read(sub["path"].iloc[0])
        for r in sub.itertuples(index=False):
            y = speed_perturb(wave, r.factor)
            p = out_dir / f"{r.id.replace('/', '_')}.au"
            sf.write(str(p), y, SAMPLE_RATE, format="AU", subtype="FLOAT")
            paths.append((r.id, str(p)))
            durations.append((r.id, len(y) / SAMPLE_RATE))
    out["path"] = out["id"].map(dict(paths))
    out["duration"] = out["id"].map(dict(durations))
    return out


def speed_store_key(manifest: pd.DataFrame, factors) -> str:
    """Short hash of a copies table: the factors and the utterances (ids and files)."""
    rows = sorted(zip(manifest["id"].astype(str), manifest["path"].astype(str)))
    blob = json.dumps({"factors": check_factors(list(factors)), "rows": rows})
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def speed_store_dir(base_dir: str | Path, factors) -> Path:
    """``<base_dir>-speed-<factors>``: one store of copies per corpus store and factor set, shared by every
    manifest (class set, subset) of that corpus."""
    return Path(f"{base_dir}-speed-{'_'.join(f'{f:g}' for f in check_factors(list(factors)))}")


def ensure_speed_store(manifest: pd.DataFrame, factors, encoder: dict, base_dir: str | Path,
                       progress: bool = True, log=print):
    """The speed-perturbed copies of every utterance of ``manifest`` (one corpus) at every factor, extracted with
    ``encoder`` into :func:`speed_store_dir`; returns ``(FeatureStore, table)`` (the table: one row per copy, as
    :func:`plan_speed_variants`, kept as ``variants-<key>.csv``). A manifest whose table is written and whose copies
    are all in the store is opened without rendering anything; otherwise every copy is rendered again
    (deterministic) and only audio the store does not hold yet is extracted (another class set of the same corpus
    reuses the copies it shares; a changed corpus file gives a copy of another content, extracted again)."""
    from serkit.augment.variants import extract_rendered, open_rendered

    factors = check_factors(list(factors))
    root = speed_store_dir(base_dir, factors)
    key = speed_store_key(manifest, factors)
    table_name = f"variants-{key}.csv"
    done = open_rendered(root, table_name)
    if done is not None:
        return done
    plan = plan_speed_variants(manifest, factors)
    log(f"rendering {len(plan)} speed-perturbed copies (factors {factors}) -> {root}")
    audio = root / f"audio-{key}"
    table = render_speed_variants(plan, audio)
    return extract_rendered(table, encoder, root, progress=progress, log=log, table_name=table_name,
                            audio_dir=audio)


def fold_speed_variants(table: pd.DataFrame, train_ids) -> pd.DataFrame:
    """The copies a fold may train on: those whose parent is one of its training utterances ``train_ids``."""
    keep = table["parent"].astype(str).isin(set(map(str, train_ids)))
    return table[keep].reset_index(drop=True)
