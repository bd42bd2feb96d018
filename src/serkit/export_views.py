"""The exported graph of a multi-view model (IF-MVSE): one window through every view's encoder, each view's pooled
statistics (speaker-normalised where a head's view was trained so) and the score-set ensemble of each head.

Inputs: ``waveform (1, samples)``, ``own (2,)`` int64, then ``speaker_mean_<view>`` / ``speaker_std_<view>``
``(layers, dim)`` for each view the speaker head normalises. Outputs: ``scores_<head>`` ``(outputs,)`` per head,
then ``pooled_<view>`` ``(layers, 2*dim)`` and ``frames_<view>`` (int64) of the frames the window owns, per view
(what the speaker's statistics are built from, as :class:`~serkit.inference.views.MultiViewRecognizer` does).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def owned_pooled(feats: torch.Tensor, own: torch.Tensor, samples) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled statistics ``(layers, 2*dim)`` and count (int64) of the frames of ``feats`` ``(layers, frames, dim)``
    that samples ``own[0]:own[1]`` of a ``samples``-long window own: frames ``[round(a / n * t), max(round(b / n *
    t), that + 1))``, the Recognizer's rule for overlapping windows; no branch on the data."""
    index = torch.arange(feats.shape[1], device=feats.device)
    t = (index >= 0).sum().double()  # frame count as a tensor
    first = torch.round(own[0].double() / samples * t).long()
    last = torch.maximum(torch.round(own[1].double() / samples * t).long(), first + 1)
    mask = ((index >= first) & (index < last)).to(feats.dtype)[None, :, None]
    count = mask.sum()
    mean = (feats * mask).sum(1, keepdim=True) / count
    std = (((feats - mean) ** 2) * mask).sum(1) / count
    return torch.cat([mean[:, 0], std.sqrt()], dim=-1), count.long()


class MultiViewGraph(nn.Module):
    """One window through several encoders (views) and score-set heads.

    Args:
        encoders: ``{view: Encoder}`` in eval mode.
        heads: ``{"speaker" | "global": ScoreSetEnsemble}`` (``model({"pooled_views": {view: (1, layers, 2*dim)}})``
            -> ``{"probs" | "prediction": (1, outputs)}``).
        layers: ``{view: hidden-state indices}`` as the feature stores keep them.
        task: ``"classification"`` or ``"regression"``; ``temperatures``: per head (1.0 without calibration).
    """

    def __init__(self, encoders: dict[str, nn.Module], heads: dict[str, nn.Module], layers: dict[str, list[int]],
                 *, task: str, temperatures: dict[str, float] | None = None):
        super().__init__()
        self.views = list(encoders)
        self.encoders = nn.ModuleDict({f"view_{v}": encoders[v] for v in self.views})
        self.layers = {v: list(layers[v]) for v in self.views}
        self.head_names = [h for h in ("speaker", "global") if h in heads]
        self.heads = nn.ModuleDict({f"head_{h}": heads[h] for h in self.head_names})
        self.task = task
        self.temperatures = {h: float((temperatures or {}).get(h, 1.0)) for h in self.head_names}
        speaker = heads.get("speaker")
        #: the views whose statistics the speaker head normalises with the speaker's (inputs of the graph)
        self.speaker_views = [v for v in self.views
                              if speaker is not None and speaker.normalize.get(v) == "speaker"]

    @property
    def normalize(self) -> bool:
        return bool(self.speaker_views)

    def input_names(self) -> list[str]:
        return ["waveform", "own"] + [f"speaker_{s}_{v}" for v in self.speaker_views for s in ("mean", "std")]

    def output_names(self) -> list[str]:
        return [f"scores_{h}" for h in self.head_names] + [f"{k}_{v}" for v in self.views for k in ("pooled", "frames")]

    def forward(self, waveform: torch.Tensor, own: torch.Tensor, stats: list[torch.Tensor] = ()
                ) -> tuple[torch.Tensor, ...]:
        """``stats``: the speaker inputs in :meth:`input_names` order (mean, std per speaker view)."""
        from serkit.features.pooling import pooled_statistics

        speaker = {v: (stats[2 * i], stats[2 * i + 1]) for i, v in enumerate(self.speaker_views)}
        feats = {}
        for v in self.views:
            out = self.encoders[f"view_{v}"](waveform)
            feats[v] = torch.stack([out.hidden_states[i][0] for i in self.layers[v]]).float()  # (layers, T, dim)
        pooled = {v: pooled_statistics(f) for v, f in feats.items()}
        scores = []
        key = "probs" if self.task == "classification" else "prediction"
        for head in self.head_names:
            views = {}
            for v in self.views:
                p = pooled[v]
                if head == "speaker" and v in speaker:
                    mean, std = speaker[v]
                    dim = mean.shape[-1]
                    p = torch.cat([(p[..., :dim] - mean) / std, p[..., dim:] / std], dim=-1)
                views[v] = p[None]
            y = self.heads[f"head_{head}"]({"pooled_views": views})[key].float()
            if key == "probs" and self.temperatures[head] != 1.0:  # softmax(log p / T): see serkit.calibration
                y = torch.softmax(torch.log(y.clamp_min(1e-12)) / self.temperatures[head], -1)
            scores.append(y[0])
        owned = []
        for v in self.views:
            owned.extend(owned_pooled(feats[v], own, waveform.shape[1]))
        return (*scores, *owned)

    def inputs(self, signal: np.ndarray, own: tuple[int, int] | None = None, stats: dict | None = None
               ) -> dict[str, np.ndarray]:
        """The graph's inputs by name for one window (16 kHz float32); ``stats``: ``{view: (mean, std)}``
        (default: some speaker's, for a graph whose speaker scores are not wanted)."""
        feed = {"waveform": np.ascontiguousarray(signal, dtype=np.float32)[None],
                "own": np.array(own if own is not None else (0, len(signal)), dtype=np.int64)}
        rng = np.random.default_rng(1)  # any positive std exercises the same computation
        for v in self.speaker_views:
            if stats is not None and v in stats:
                mean, std = stats[v]
            else:
                shape = (len(self.layers[v]), self.encoders[f"view_{v}"].hidden_size)
                mean, std = rng.normal(0, 0.1, shape), rng.uniform(0.5, 2.0, shape)
            feed[f"speaker_mean_{v}"] = np.asarray(mean, dtype=np.float32)
            feed[f"speaker_std_{v}"] = np.asarray(std, dtype=np.float32)
        return feed


def multi_view_graph(rec) -> MultiViewGraph:
    """The :class:`MultiViewGraph` of a torch :class:`~serkit.inference.views.MultiViewRecognizer`."""
    return MultiViewGraph({v: e.eval() for v, e in rec.encoders.items()},
                          {h: m.eval() for h, m in rec.heads.items()},
                          {v: info["layers"] for v, info in rec.views.items()}, task=rec.labels.task,
                          temperatures={h: rec.temperature(h) for h in rec.heads}).eval()
