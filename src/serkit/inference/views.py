"""Prediction with a multi-view model (IF-MVSE): several encoders, each view with its own feature stage.

:class:`MultiViewRecognizer` is the :class:`~serkit.inference.recognizer.Recognizer` of a model folder whose
``encoder.json`` lists ``views`` (``{view: {encoder, revision, mode, layers, ...}}``); everything else (windows, heads,
enrolment, files, manifests, segments) is the Recognizer's. It replaces only the seams that assume one encoder:

* ``_encode``: every window through every view's encoder, as the feature cache stores it: pooled statistics
  ``{view: (stored layers, 2*dim)}`` float32, and per view the owned frames' statistics for the speaker's;
* ``_combine``: the speaker's statistics per view ``{view: (mean, std)}`` ``(layers, dim)``;
* ``_score``: each view speaker-normalised where the head's view was trained so (the speaker head), then the head
  (:class:`serkit.models.score_sets.ScoreSetEnsemble`: layer choice, pooling, z-scores, score sets, weights).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from serkit.errors import SerkitError
from serkit.inference.recognizer import Recognizer
from serkit.inference.windows import load_recorded_encoder, owned_statistics
from serkit.model_folder import model_folder_part


class MultiViewRecognizer(Recognizer):
    """A :class:`~serkit.inference.recognizer.Recognizer` over several encoders (views); build it with
    :meth:`Recognizer.from_pretrained`."""

    @classmethod
    def loads(cls, model_dir: Path, backend: str) -> bool:
        """A torch model folder whose ``encoder.json`` lists ``views``."""
        if backend != "torch" or not (Path(model_dir) / "encoder.json").exists():
            return False
        with model_folder_part(Path(model_dir), "encoder.json"):
            enc = json.loads((Path(model_dir) / "encoder.json").read_text())
        return isinstance(enc, dict) and "views" in enc

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.views: dict[str, dict] = dict(self.encoder_info["views"])
        self._encoders: dict = {}

    @property
    def encoders(self) -> dict:
        """``{view: Encoder}``, loaded on first use in the features' precision."""
        from serkit.precision import torch_dtype

        for view, info in self.views.items():
            if view not in self._encoders:  # each view warns when its encoder's revision is not the trained one
                self._encoders[view] = load_recorded_encoder(info, self.device, torch_dtype(self.precision))
        return self._encoders

    @property
    def encoder(self):
        raise SerkitError(f"this model has several encoders (views {', '.join(self.views)}); see .encoders")

    def _encode(self, pieces: Iterable[tuple[object, np.ndarray, tuple[int, int]]]):
        """``(key, {view: pooled (layers, 2*dim)}, {view: (pooled stats, frames)} or None)`` per piece, in order."""
        from serkit.encoders.runner import encode_signals
        from serkit.features.pooling import pooled_statistics

        pieces = list(pieces)
        pooled: dict = {key: {} for key, _, _ in pieces}
        owned: dict = {key: {} for key, _, _ in pieces}
        spans = {key: (own, len(signal)) for key, signal, own in pieces}
        for view, encoder in self.encoders.items():
            items = ((key, signal) for key, signal, _ in pieces)
            for key, feats in encode_signals(encoder, items, self.views[view]["layers"],
                                             max_batch_size=self.batch_size):
                pooled[key][view] = pooled_statistics(feats)
                owned[key][view] = owned_statistics(feats, *spans[key])
        for key, _, _ in pieces:
            own = owned[key]
            yield key, pooled[key], None if any(o is None for o in own.values()) else own

    def _combine(self, own: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        from serkit.data.normalize import frame_stats

        return {v: frame_stats(np.stack([o[v][0] for o in own]), [o[v][1] for o in own]) for v in self.views}

    def _ready_statistics(self, enroll) -> bool:
        return isinstance(enroll, dict) and set(enroll) == set(self.views) and all(
            super(MultiViewRecognizer, self)._ready_statistics(tuple(s)) for s in enroll.values())

    @torch.no_grad()
    def _score(self, head: str, inputs: Sequence, stats) -> np.ndarray:
        """Scores ``(len(inputs), outputs)``: class probabilities or attribute values of the combination."""
        from serkit.data.normalize import normalize_pooled

        model = self.heads[head]
        speaker_views = [v for v, mode in model.normalize.items() if mode == "speaker"]
        if speaker_views and stats is None:
            raise SerkitError(f"the {head} head normalises view(s) {', '.join(speaker_views)} per speaker and needs "
                              f"at least {self.min_enroll_seconds:.0f} s of the speaker's audio "
                              "(--enroll / --same-speaker)")
        key = "probs" if self.labels.task == "classification" else "prediction"
        out = []
        for i in range(0, len(inputs), self.batch_size):
            chunk = inputs[i:i + self.batch_size]
            views = {}
            for v in self.views:
                x = [item[v].numpy() for item in chunk]
                if v in speaker_views:
                    x = [normalize_pooled(p, *stats[v]) for p in x]
                views[v] = torch.from_numpy(np.stack(x).astype(np.float32)).to(self.device)
            y = model({"pooled_views": views})[key].float()
            if key == "probs" and self.temperature(head) != 1.0:  # softmax(log p / T): see serkit.calibration
                y = torch.softmax(torch.log(y.clamp_min(1e-12)) / self.temperature(head), -1)
            out.append(y.cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.labels.num_outputs), dtype=np.float32)
