"""Waveform mixup for SER: energy-adaptive mixup (EAM, MLL paper) and label-adaptive mixup (LAM, its baseline).

Both work on raw waveforms (float, 16 kHz, shape ``(samples,)``) *before* the encoder, and both produce soft
labels ``y = (1 - lam) * y_i + lam * y_j`` (Eq. 4 of the MLL paper for EAM; length weights for LAM).

References
    * Wang, Geng et al., "Multi-Loss Learning for Speech Emotion Recognition with Energy-Adaptive Mixup and
      Frame-Level Attention", Interspeech 2025 -- Section 2.2, Eqs. (1)-(4).
    * Kang, Zhang, Jiang, "Learning robust self-attention features for speech emotion recognition with
      label-adaptive mixup", ICASSP 2023 (LAM).

Pure functions (:func:`energy_adaptive_mix`, :func:`label_adaptive_mix`) mix one pair ``(x_i, x_j)`` with an
explicit ``rng: np.random.Generator`` and return ``(mixed, lam, info)`` where ``lam`` is the weight of the
*partner's* label ``y_j``. The batch classes (:class:`EnergyAdaptiveMixup`, :class:`LabelAdaptiveMixup`) share the
:class:`WaveformMixup` interface a trainer calls::

    waves, soft = mixup(waves, labels, num_classes, rng)   # list[(samples,)], (batch, classes) float32
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

try:  # torch is optional for these functions: numpy in, numpy out; torch in, torch out.
    import torch
except ImportError:  # pragma: no cover
    torch = None  # type: ignore[assignment]

__all__ = [
    "EnergyAdaptiveMixup",
    "LabelAdaptiveMixup",
    "MixupResult",
    "WaveformMixup",
    "energy_adaptive_mix",
    "label_adaptive_mix",
    "mix_labels",
    "segment_energy",
    "to_soft_labels",
]


# --------------------------------------------------------------------------------------------------- helpers


def _as_numpy(x) -> tuple[np.ndarray, Any]:
    """``(array, like)``: a 1-D numpy view of ``x`` (numpy or torch) and the original for :func:`_like`."""
    if torch is not None and isinstance(x, torch.Tensor):
        arr = x.detach().cpu().numpy()
    else:
        arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"mixup: expected a mono waveform of shape (samples,), got shape {arr.shape}")
    return arr, x


def _like(arr: np.ndarray, like) -> Any:
    """Convert ``arr`` back to the type, dtype and device of ``like``."""
    if torch is not None and isinstance(like, torch.Tensor):
        return torch.from_numpy(np.ascontiguousarray(arr)).to(dtype=like.dtype, device=like.device)
    dtype = like.dtype if isinstance(like, np.ndarray) and np.issubdtype(like.dtype, np.floating) else np.float32
    return arr.astype(dtype, copy=False)


def segment_energy(x: np.ndarray) -> float:
    """Energy P of a segment as its mean square ``mean(x**2)`` (float64; 0 for an empty segment)."""
    x = np.asarray(x, dtype=np.float64)
    return float(np.mean(x * x)) if x.size else 0.0


def to_soft_labels(labels, num_classes: int) -> np.ndarray:
    """Labels as rows of class probabilities, ``(batch, classes)`` float32.

    ``labels`` is either class indices ``(batch,)`` (int) or one-hot / soft rows ``(batch, classes)``.
    """
    lab = labels.detach().cpu().numpy() if torch is not None and isinstance(labels, torch.Tensor) else labels
    lab = np.asarray(lab)
    if lab.ndim == 1:
        idx = lab.astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= num_classes):
            raise ValueError(f"mixup: class indices must lie in [0, {num_classes}), got {idx.min()}..{idx.max()}")
        out = np.zeros((len(idx), num_classes), dtype=np.float32)
        out[np.arange(len(idx)), idx] = 1.0
        return out
    if lab.ndim == 2 and lab.shape[1] == num_classes:
        return lab.astype(np.float32)
    raise ValueError(f"mixup: labels must be (batch,) indices or (batch, {num_classes}) rows, got {lab.shape}")


def mix_labels(y_i: np.ndarray, y_j: np.ndarray, lam: float) -> np.ndarray:
    """Soft label ``(1 - lam) * y_i + lam * y_j`` (Eq. 4); rows of probabilities stay rows of probabilities."""
    return ((1.0 - lam) * np.asarray(y_i, dtype=np.float64) + lam * np.asarray(y_j, dtype=np.float64)).astype(
        np.float32)


# --------------------------------------------------------------------------------------------------- EAM


def _eam_placement(l_i: int, l_j: int, rng: np.random.Generator | None, snr_db_range: tuple[float, float],
                   l_mix: int | None, s_i: int | None, s_j: int | None, snr_db: float | None
                   ) -> tuple[int, int, int, float] | None:
    """``(l_mix, s_i, s_j, snr_db)`` of one EAM pair of lengths ``l_i``, ``l_j`` (samples): the given values,
    checked, and the others drawn from ``rng`` in that order (mix length and starts in samples, SNR in dB).
    ``None`` when ``l_mix`` is to be drawn and no valid one exists (``l_i < 3`` or ``l_j == 0``)."""
    max_mix = min((l_i - 1) // 2, l_j)  # largest integer strictly below l_i / 2, and not longer than x_j
    if l_mix is None:
        if max_mix < 1:
            return None
        rng = _need_rng(rng)
        l_mix = int(rng.integers(1, max_mix + 1))
    elif not 1 <= l_mix <= max_mix:
        raise ValueError(f"energy_adaptive_mix: l_mix={l_mix} must satisfy 1 <= l_mix < l_i/2 = {l_i / 2} and "
                         f"l_mix <= l_j = {l_j}")
    if s_i is None:
        s_i = int(_need_rng(rng).integers(0, l_i - l_mix + 1))
    if s_j is None:
        s_j = int(_need_rng(rng).integers(0, l_j - l_mix + 1))
    if not 0 <= s_i <= l_i - l_mix or not 0 <= s_j <= l_j - l_mix:
        raise ValueError(f"energy_adaptive_mix: starts s_i={s_i}, s_j={s_j} out of range for l_mix={l_mix}, "
                         f"l_i={l_i}, l_j={l_j}")
    if snr_db is None:
        lo, hi = snr_db_range
        snr_db = float(_need_rng(rng).uniform(lo, hi))
    return l_mix, s_i, s_j, snr_db


def energy_adaptive_mix(
    x_i,
    x_j,
    rng: np.random.Generator | None = None,
    *,
    snr_db_range: tuple[float, float] = (-5.0, 10.0),
    l_mix: int | None = None,
    s_i: int | None = None,
    s_j: int | None = None,
    snr_db: float | None = None,
) -> tuple[Any, float, dict]:
    """Energy-adaptive mixup (EAM) of one pair: overlay an SNR-scaled segment of ``x_j`` onto a segment of ``x_i``.

    Args:
        x_i: dominant waveform, shape ``(l_i,)`` (numpy or torch, 16 kHz; any amplitude scale).
        x_j: interfering waveform, shape ``(l_j,)``.
        rng: draws whatever of ``l_mix``, ``s_i``, ``s_j``, ``snr_db`` is not given.
        snr_db_range: ``(low, high)`` in dB for the uniform SNR draw; the paper uses ``[-5, 10]``.
        l_mix: mix length in samples, ``1 <= l_mix < l_i / 2`` and ``l_mix <= l_j``; drawn uniformly from the
            integers in that range when ``None``.
        s_i, s_j: segment starts in samples, ``0 <= s <= l - l_mix``; drawn uniformly when ``None``.
        snr_db: SNR of the dominant segment over the scaled interfering one, in dB.

    Steps (MLL paper, Section 2.2):
        * segments ``x'_i = x_i[s_i : s_i + l_mix]`` and ``x'_j = x_j[s_j : s_j + l_mix]``;
        * Eq. (1): ``scale = sqrt(P'_i / (10**(SNR/10) * P'_j))`` with ``P`` the mean square of a segment;
        * Eq. (2): ``x''_j = scale * x'_j``, so ``P'_i / P''_j = 10**(SNR/10)``;
        * Eq. (3): ``x_mix`` is ``x_i`` with ``[s_i : s_i + l_mix]`` replaced by ``x'_i + x''_j`` (the rest of
          ``x_i`` is untouched, the length stays ``l_i``; no clipping is applied);
        * Eq. (4): ``lam = P''_j / (P'_i + P''_j) * l_mix / l_i``, the weight of ``y_j`` in the soft label.

    No mixing (``lam = 0``, ``x_mix`` a copy of ``x_i``) when either segment is silent (energy 0), or when no
    valid ``l_mix`` exists (``l_i < 3`` or ``l_j == 0``).

    Returns:
        ``(x_mix, lam, info)``: ``x_mix`` of shape ``(l_i,)`` and the type/dtype of ``x_i``; ``lam`` in
        ``[0, 0.5)``; ``info`` with keys ``mixed`` (bool), ``l_mix``, ``s_i``, ``s_j``, ``snr_db``, ``scale``,
        ``p_i`` (P'_i), ``p_j`` (P'_j), ``p_j_scaled`` (P''_j), ``reason`` (why not mixed, else ``None``).
    """
    xi, like = _as_numpy(x_i)
    xj, _ = _as_numpy(x_j)
    l_i, l_j = len(xi), len(xj)
    info: dict[str, Any] = {"mixed": False, "l_mix": 0, "s_i": 0, "s_j": 0, "snr_db": None, "scale": 0.0,
                            "p_i": 0.0, "p_j": 0.0, "p_j_scaled": 0.0, "reason": None}
    placement = _eam_placement(l_i, l_j, rng, snr_db_range, l_mix, s_i, s_j, snr_db)
    if placement is None:
        info["reason"] = f"too short to mix (l_i={l_i}, l_j={l_j})"
        return _like(xi.copy(), like), 0.0, info
    l_mix, s_i, s_j, snr_db = placement
    info.update(l_mix=int(l_mix), s_i=int(s_i), s_j=int(s_j), snr_db=float(snr_db))

    seg_i = xi[s_i:s_i + l_mix].astype(np.float64)
    seg_j = xj[s_j:s_j + l_mix].astype(np.float64)
    p_i, p_j = segment_energy(seg_i), segment_energy(seg_j)
    info.update(p_i=p_i, p_j=p_j)
    if p_i <= 0.0 or p_j <= 0.0 or not np.isfinite(p_i) or not np.isfinite(p_j):
        info["reason"] = "silent segment (energy 0)"
        return _like(xi.copy(), like), 0.0, info

    scale = float(np.sqrt(p_i / (10.0 ** (snr_db / 10.0) * p_j)))  # Eq. (1)
    seg_j2 = scale * seg_j  # Eq. (2)
    p_j2 = segment_energy(seg_j2)
    out = xi.astype(np.float64)  # a copy
    out[s_i:s_i + l_mix] = seg_i + seg_j2  # Eq. (3)
    lam = p_j2 / (p_i + p_j2) * (l_mix / l_i)  # Eq. (4)
    info.update(mixed=True, scale=scale, p_j_scaled=p_j2)
    return _like(out, like), float(lam), info


# --------------------------------------------------------------------------------------------------- LAM


def label_adaptive_mix(
    x_i,
    x_j,
    rng: np.random.Generator | None = None,
    *,
    placement: str = "start",
    offset: int | None = None,
) -> tuple[Any, float, dict]:
    """Label-adaptive mixup (LAM, Kang et al. 2023) of one pair: sum the two waveforms, weight labels by length.

    The output has the length ``L = max(l_i, l_j)`` of the longer input. The shorter waveform is placed inside
    that span starting at ``offset`` and is zero elsewhere (zero-padding); the longer one is used as is; the two
    are summed without rescaling. ``placement="start"`` (default) puts the shorter one at offset 0 (plain
    zero-padding at the end), ``placement="random"`` draws the offset uniformly from ``[0, L - l_short]``; an
    explicit ``offset`` overrides both.

    The soft label is ``l_i / (l_i + l_j) * y_i + l_j / (l_i + l_j) * y_j``; the returned ``lam`` is the partner's
    weight ``l_j / (l_i + l_j)`` (the two weights sum to 1; with ``y_i == y_j`` the soft label stays one-hot).

    Args:
        x_i, x_j: waveforms ``(l_i,)``, ``(l_j,)`` (numpy or torch, 16 kHz).
        rng: needed only for ``placement="random"`` without ``offset``.

    Returns:
        ``(x_mix, lam, info)``: ``x_mix`` of shape ``(max(l_i, l_j),)`` with the type/dtype of ``x_i``;
        ``info`` has ``offset`` (where the shorter one starts), ``shorter`` (``"i"`` or ``"j"``), ``w_i``, ``w_j``.
    """
    xi, like = _as_numpy(x_i)
    xj, _ = _as_numpy(x_j)
    l_i, l_j = len(xi), len(xj)
    if l_i + l_j == 0:
        raise ValueError("label_adaptive_mix: both waveforms are empty")
    long_, short, shorter = (xi, xj, "j") if l_i >= l_j else (xj, xi, "i")
    span = len(long_) - len(short)
    if offset is None:
        if placement == "start":
            offset = 0
        elif placement == "random":
            offset = int(_need_rng(rng).integers(0, span + 1))
        else:
            raise ValueError(f"label_adaptive_mix: placement must be 'start' or 'random', got {placement!r}")
    if not 0 <= offset <= span:
        raise ValueError(f"label_adaptive_mix: offset={offset} out of range [0, {span}]")
    out = long_.astype(np.float64)
    out[offset:offset + len(short)] += short.astype(np.float64)
    w_i, w_j = l_i / (l_i + l_j), l_j / (l_i + l_j)
    info = {"offset": int(offset), "shorter": shorter, "w_i": w_i, "w_j": w_j}
    return _like(out, like), float(w_j), info


def _need_rng(rng: np.random.Generator | None) -> np.random.Generator:
    if rng is None:
        raise ValueError("mixup: pass rng=np.random.default_rng(...) to draw the random mixing parameters")
    return rng


# --------------------------------------------------------------------------------------------------- batches


@dataclass
class MixupResult:
    """What a batch mixup did.

    ``waves``: mixed waveforms (same order as the input); ``soft_labels``: ``(batch, classes)`` float32, rows
    sum to 1; ``partners``: ``(batch,)`` int, index of each sample's partner or -1 where not mixed;
    ``lams``: ``(batch,)`` float, the partner's label weight (0 where not mixed); ``infos``: per-sample dicts.
    """

    waves: list
    soft_labels: np.ndarray
    partners: np.ndarray
    lams: np.ndarray
    infos: list[dict]


class WaveformMixup(ABC):
    """Common interface of waveform mixups; a trainer calls ``mixup(waves, labels, num_classes, rng)``.

    For each sample ``i`` (with probability ``p``) a partner ``j != i`` is drawn from the same batch
    (from another class when ``different_class`` and such a sample exists, else from any other sample), the pair is
    mixed by :meth:`mix_pair` from the *original* waveforms, and the soft label becomes
    ``(1 - lam) * y_i + lam * y_j``. A batch of one, or ``p = 0``, leaves everything as is (one-hot labels).
    """

    def __init__(self, p: float = 1.0, different_class: bool = False):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"mixup: p must be in [0, 1], got {p}")
        self.p = float(p)
        self.different_class = bool(different_class)

    @abstractmethod
    def mix_pair(self, x_i, x_j, rng: np.random.Generator) -> tuple[Any, float, dict]:
        """Mix one pair; returns ``(mixed, lam, info)`` with ``lam`` the weight of ``y_j``."""

    def mix_batch(self, waves: list, labels, num_classes: int, rng: np.random.Generator) -> MixupResult:
        """Mix a batch. ``waves``: list of ``(samples,)`` arrays; ``labels``: ``(batch,)`` indices or
        ``(batch, classes)`` one-hot/soft rows. Returns a :class:`MixupResult`."""
        n = len(waves)
        y = to_soft_labels(labels, num_classes)
        if len(y) != n:
            raise ValueError(f"mixup: {n} waveforms but {len(y)} labels")
        cls = y.argmax(axis=1) if n else np.zeros(0, dtype=np.int64)
        out_waves = list(waves)
        soft = y.copy()
        partners = np.full(n, -1, dtype=np.int64)
        lams = np.zeros(n, dtype=np.float64)
        infos: list[dict] = [{} for _ in range(n)]
        for i in range(n):
            if n < 2 or rng.random() >= self.p:
                continue
            candidates = np.flatnonzero(np.arange(n) != i)
            if self.different_class:
                other = candidates[cls[candidates] != cls[i]]
                if len(other):
                    candidates = other
            j = int(rng.choice(candidates))
            mixed, lam, info = self.mix_pair(waves[i], waves[j], rng)
            out_waves[i] = mixed
            soft[i] = mix_labels(y[i], y[j], lam)
            partners[i], lams[i], infos[i] = j, lam, info
        return MixupResult(out_waves, soft.astype(np.float32), partners, lams, infos)

    def __call__(self, waves: list, labels, num_classes: int, rng: np.random.Generator) -> tuple[list, np.ndarray]:
        """``(mixed waveforms, soft labels (batch, classes) float32)``; see :meth:`mix_batch`."""
        res = self.mix_batch(waves, labels, num_classes, rng)
        return res.waves, res.soft_labels


class EnergyAdaptiveMixup(WaveformMixup):
    """Batch-level EAM (MLL paper, Section 2.2, Eqs. 1-4): each sample gets an SNR-scaled segment of a partner.

    Args:
        p: probability that a sample is mixed.
        snr_db: ``(low, high)`` SNR range in dB, uniform draw (paper: ``(-5, 10)``).
        different_class: draw partners from other classes when possible.
    """

    def __init__(self, p: float = 1.0, snr_db: tuple[float, float] = (-5.0, 10.0), different_class: bool = False):
        super().__init__(p=p, different_class=different_class)
        lo, hi = float(snr_db[0]), float(snr_db[1])
        if lo > hi:
            raise ValueError(f"EnergyAdaptiveMixup: snr_db low {lo} > high {hi}")
        self.snr_db = (lo, hi)

    def mix_pair(self, x_i, x_j, rng: np.random.Generator) -> tuple[Any, float, dict]:
        return energy_adaptive_mix(x_i, x_j, rng, snr_db_range=self.snr_db)


class LabelAdaptiveMixup(WaveformMixup):
    """Batch-level LAM (Kang et al. 2023): sum of the pair, labels weighted by lengths.

    Args:
        p: probability that a sample is mixed.
        placement: where the shorter waveform goes in the longer one's span, ``"start"`` or ``"random"``
            (see :func:`label_adaptive_mix`).
        different_class: draw partners from other classes when possible.

    Mixed waveforms have the longer input's length, so a sample may grow.
    """

    def __init__(self, p: float = 1.0, placement: str = "start", different_class: bool = False):
        super().__init__(p=p, different_class=different_class)
        if placement not in ("start", "random"):
            raise ValueError(f"LabelAdaptiveMixup: placement must be 'start' or 'random', got {placement!r}")
        self.placement = placement

    def mix_pair(self, x_i, x_j, rng: np.random.Generator) -> tuple[Any, float, dict]:
        return label_adaptive_mix(x_i, x_j, rng, placement=self.placement)
