"""The GMP-ATL stage model (Pan et al., Interspeech 2024): an encoder in the loop, a layer featurizer, a stage head.

``GMPStageModel(encoder, stage, num_classes, num_layers, layers=...)`` where ``encoder`` is a
:class:`~serkit.models.staged_encoder.StagedEncoder` (waveforms, or the cached hidden state at the input of the
trainable top blocks):

* every hidden state the head may use is assembled: from the cache, stored layers below the encoder's first
  trainable block come from ``batch["features"]`` ``(B, layers, T, D)`` (all stored layers) and the rest from the
  blocks run here; from waveforms, all of them from the encoder;
* each is speaker-normalised with ``batch["speaker_mean"]`` / ``["speaker_std"]`` when the feature stage attaches
  them (:func:`serkit.data.normalize.normalize_hidden`; the statistics are those of the pretrained encoder's
  layers, exact for frozen layers, an approximation for fine-tuned ones);
* frozen layers may come as statistics only: with ``batch["pooled"]`` ``(B, layers, 2*D)`` (the cache's
  speaker-normalised mean + std per hidden state), ``batch["features"]`` needs only the blocks' input
  ``(B, 1, T, D)``, and the stats head and stage 2's probe read the layers below it from ``pooled`` (what they
  would compute from those frames, without reading and normalising them at every step);
* a :class:`~serkit.encoders.featurizer.Featurizer` combines them (``layers``: ``weighted`` = learned weighted sum,
  an index, a list) into frames ``(B, T, D)``.

Heads per stage: 1 = BiLSTM -> mean pooling -> projection -> emotion + gender logits; 2 = one pseudo-label head per
k-means scale on the (normalised) top layer plus a linear probe on the detached mean-pooled featurizer output
(``logits``, for validation only); 3 = the stage-1 head structure with an AM-softmax classifier (or plain CE).

``head`` (stages 1 and 3): ``bilstm`` (the paper's, above) or ``stats`` (:class:`StatsHead`, the linear baseline's
family, ``configs/<corpus>/baseline.yaml``): per hidden state the mean and std over the real frames, of the
featurizer's layers, batch-norm standardised (no affine), concatenated (``layers: all`` or a list) or combined by the
featurizer's softmax weights (``weighted``), dropout, an optional linear projection (``proj_dim``; 0 = none), then
linear emotion (+ gender in stage 1) logits or the AM-softmax classifier. Stage 3's statistics include the
fine-tuned top blocks' outputs.

Out keys: stage 1 ``logits, gender_logits, embedding``; stage 2 ``pseudo_logits {k: (B, T, k)}, span_mask (B, T),
pseudo_labels {k: (B, T)}, logits`` (``masked_only``: the masked real frames only, ``{k: (N, k)}``, ``(N,)``,
``{k: (N,)}``); stage 3 ``logits, embedding`` (+ ``cosine`` with AM-softmax).
"""

from __future__ import annotations

import torch
from torch import nn

from serkit.augment.masking import compute_span_mask
from serkit.data.normalize import normalize_hidden
from serkit.encoders.featurizer import Featurizer
from serkit.models.baseline import _FeatureBatchNorm
from serkit.models.bilstm_head import BiLSTMHead
from serkit.models.heads_am import AMSoftmaxHead
from serkit.models.pooling import StatsPooling, masked_mean
from serkit.models.pseudo_label_head import PseudoLabelHead
from serkit.models.staged_encoder import StagedEncoder

HEADS = ("bilstm", "stats")


class StatsHead(nn.Module):
    """Utterance statistics of several hidden states -> standardise -> combine -> dropout -> [projection] -> heads.

    ``forward(hidden [(batch, frames, dim)] * layers, frame_mask (batch, frames), weights (layers,) | None)``:
    ``stats`` ``(batch, layers, 2*dim)`` (masked mean then std, :class:`~serkit.models.pooling.StatsPooling`) are
    standardised per feature with batch / running statistics (the baseline's ``_FeatureBatchNorm``, what a
    StandardScaler does for a linear model), then concatenated, or summed with ``weights`` (a learned softmax, as
    ``pooled_mlp`` with ``combine: weighted``). Returns ``{"logits", "embedding" (batch, proj_dim or width)}`` and
    ``gender_logits`` with ``num_genders``.

    Args:
        dim: hidden state width; layers: how many hidden states it reads; weighted: sum instead of concatenate.
        num_classes, num_genders (0: no gender head), proj_dim (0: no projection; else ``Linear`` without
        activation, so the model stays linear in the statistics), dropout (on the standardised statistics).
    """

    def __init__(self, dim: int, layers: int, num_classes: int, *, weighted: bool = False, num_genders: int = 0,
                 proj_dim: int = 0, dropout: float = 0.3):
        super().__init__()
        self.pool = StatsPooling(dim)
        self.norm = _FeatureBatchNorm(self.pool.output_size, layers)
        self.weighted = bool(weighted)
        width = self.pool.output_size * (1 if self.weighted else layers)
        self.dropout = nn.Dropout(dropout)
        self.projection = nn.Linear(width, proj_dim) if proj_dim else nn.Identity()
        self.output_size = int(proj_dim) or width
        self.emotion = nn.Linear(self.output_size, num_classes)
        self.gender = nn.Linear(self.output_size, num_genders) if num_genders else None

    def forward(self, hidden: list[torch.Tensor], frame_mask: torch.Tensor | None,
                weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return self.from_stats(torch.stack([self.pool(h, frame_mask) for h in hidden], 1), weights)

    def from_stats(self, stats: torch.Tensor, weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The head on utterance statistics ``(batch, layers, 2*dim)`` (mean then std per hidden state), e.g. the
        feature cache's pooled statistics of a frozen encoder (what :meth:`forward` computes from frames)."""
        x = self.norm(stats.float())  # (batch, layers, 2*dim)
        if self.weighted:
            if weights is None or weights.shape != (x.shape[1],):
                raise ValueError(f"StatsHead (weighted): expected {x.shape[1]} layer weights, got "
                                 f"{None if weights is None else tuple(weights.shape)}")
            x = torch.einsum("k,bkd->bd", weights.to(x.dtype), x)
        else:
            x = x.flatten(1)
        emb = self.projection(self.dropout(x))
        out = {"logits": self.emotion(emb), "embedding": emb}
        if self.gender is not None:
            out["gender_logits"] = self.gender(emb)
        return out


class GMPStageModel(nn.Module):
    """One GMP-ATL stage; see the module docstring. ``batch["pseudo"]`` (B, scales, T_max) long (-1 = none) feeds
    stage 2."""

    #: the model normalises encoder outputs itself: it takes raw features plus the speaker statistics
    takes_speaker_stats = True

    def __init__(self, encoder: StagedEncoder, stage: int, num_classes: int, *, layers="weighted",
                 hidden: int = 256, proj_dim: int = 256, ks=(64, 512, 4096), mask_prob: float = 0.08,
                 span: int = 10, min_masks: int = 2, loss: str = "am_softmax", s: float = 30.0, m: float = 0.2,
                 head: str = "bilstm", dropout: float = 0.3, masked_only: bool = True):
        super().__init__()
        self.encoder, self.stage = encoder, int(stage)
        self.pool = StatsPooling(encoder.encoder.hidden_size)
        self.num_layers = int(encoder.encoder.num_layers)
        dim = encoder.encoder.hidden_size
        self.featurizer = Featurizer(self.num_layers, dim, layers)
        feat_dim = self.featurizer.output_size
        if self.stage == 2:
            self.ks = [int(k) for k in ks]
            self.pseudo_head = PseudoLabelHead(dim, self.ks, hidden=hidden)
            self.probe = nn.Linear(feat_dim, num_classes)
            self.mask_prob, self.span, self.min_masks = float(mask_prob), int(span), int(min_masks)
            self.masked_only = bool(masked_only)
        else:
            if head not in HEADS:
                raise ValueError(f"GMPStageModel head must be one of {HEADS}, got {head!r}")
            genders = 2 if self.stage == 1 else 0
            self.head_kind = head
            if head == "stats":
                self.head = StatsHead(dim, len(self.featurizer.indices), num_classes,
                                      weighted=self.featurizer.reduce == "weighted", num_genders=genders,
                                      proj_dim=proj_dim, dropout=dropout)
                emb = self.head.output_size
            else:
                self.head = BiLSTMHead(feat_dim, hidden=hidden, num_classes=num_classes, num_genders=genders,
                                       proj_dim=proj_dim)
                emb = proj_dim
            self.am = AMSoftmaxHead(emb, num_classes, s=s, m=m) if (stage == 3 and loss == "am_softmax") else None

    def hidden_states(self, batch: dict, mask_time_indices: torch.Tensor | None = None):
        """Every hidden state ``0..num_layers-1`` ``(B, T, D)`` float32, speaker-normalised when the batch carries
        statistics, and the frame mask ``(B, T)``.

        From the cache, ``batch["features"]`` holds every stored hidden state ``(B, layers, T, D)``, or only the input
        of the trainable blocks ``(B, 1, T, D)`` when ``batch["pooled"]`` ``(B, layers, 2*D)`` (speaker-normalised
        by the feature stage) carries the frozen layers' statistics: the layers below that input are then None
        (:meth:`layer_statistics` takes them from ``pooled``)."""
        enc = self.encoder
        if enc.source == "cache":
            feats = batch["features"]
            first = enc.first_layer
            if feats.shape[1] == self.num_layers:
                lower, start = [feats[:, i].float() for i in range(first)], feats[:, first:first + 1]
            elif feats.shape[1] == 1 and "pooled" in batch:
                lower, start = [None] * first, feats
            else:
                raise ValueError(f"GMPStageModel (cache): expected every stored hidden state ({self.num_layers}) in "
                                 f"batch['features'], or the blocks' input alone with batch['pooled'], got "
                                 f"{tuple(feats.shape)}")
            out = enc({"features": start, "frame_mask": batch["frame_mask"]}, mask_time_indices)
            hidden = lower + [h.float() for h in out.hidden_states]
        else:
            out = enc(batch, mask_time_indices)
            hidden = [h.float() for h in out.hidden_states]
        return [None if h is None else normalize_hidden(h, batch, i) for i, h in enumerate(hidden)], out.frame_mask

    def layer_statistics(self, batch: dict, hidden: list, frame_mask: torch.Tensor, indices,
                         mean_only: bool = False) -> torch.Tensor:
        """Utterance statistics ``(B, len(indices), 2*D)`` (``mean_only``: ``(B, len(indices), D)``) of hidden
        states ``indices``: masked mean then std over the real frames, or ``batch["pooled"]`` for a layer
        :meth:`hidden_states` left None (a frozen layer: the same statistics, computed once by the cache)."""
        dim = self.encoder.encoder.hidden_size
        stats = []
        for i in indices:
            if hidden[i] is None:
                s = batch["pooled"][:, i].float()
                stats.append(s[:, :dim] if mean_only else s)
            else:
                stats.append(masked_mean(hidden[i], frame_mask) if mean_only else self.pool(hidden[i], frame_mask))
        return torch.stack(stats, 1)

    def forward(self, batch: dict) -> dict:
        if self.stage == 2:
            return self._pseudo_label_outputs(batch)
        if "pooled" in batch and "features" not in batch and "waveform" not in batch:
            # a frozen encoder: the cache's pooled statistics, stats head only
            if self.head_kind != "stats" or self.encoder.trains:
                raise ValueError("GMPStageModel: pooled statistics feed only a stats head on a frozen encoder")
            out = self.head.from_stats(batch["pooled"][:, self.featurizer.indices], self.featurizer.layer_weights())
        else:
            hidden, fm = self.hidden_states(batch)
            if self.head_kind == "stats":
                out = self.head.from_stats(self.layer_statistics(batch, hidden, fm, self.featurizer.indices),
                                           self.featurizer.layer_weights())
            else:
                if any(h is None for h in hidden):
                    raise ValueError("GMPStageModel: the BiLSTM head reads the frames of every hidden state; "
                                     "batch['features'] holds only the blocks' input")
                out = self.head(self.featurizer(hidden), fm)
            out["frame_mask"] = fm
        if self.am is not None:
            out.update(self.am(out["embedding"]))
        return out

    def _pseudo_label_outputs(self, batch: dict) -> dict:
        """Stage 2: span-masked frames (in training) -> per-scale pseudo-label logits on the top layer + the probe.

        With ``masked_only`` the pseudo-label logits and labels are those of the masked real frames only,
        ``{k: (N, k)}`` and ``{k: (N,)}`` (all the masked-prediction loss reads; in evaluation, where nothing is
        masked, N = 0); otherwise every frame's, ``{k: (B, T, k)}`` and ``{k: (B, T)}``."""
        if "features" not in batch and "waveform" not in batch:
            raise ValueError("GMPStageModel: pooled statistics feed only a stats head on a frozen encoder")
        mask = None
        if self.training:
            fm = self.encoder.frame_mask(batch)
            mask = compute_span_mask(tuple(fm.shape), self.mask_prob, self.span, self.min_masks, fm, device=fm.device)
        hidden, fm = self.hidden_states(batch, mask)
        top = hidden[-1]
        b, t = fm.shape
        span = mask if mask is not None else torch.zeros(b, t, dtype=torch.bool, device=top.device)
        lab = batch.get("pseudo")
        if lab is None:
            lab = torch.full((b, len(self.ks), t), -1, dtype=torch.long, device=top.device)
        else:
            lab = lab.to(top.device).long()[:, :, :t]
            if lab.shape[-1] < t:
                lab = nn.functional.pad(lab, (0, t - lab.shape[-1]), value=-1)
        labels = {k: lab[:, i] for i, k in enumerate(self.ks)}
        if self.masked_only:
            sel = span & fm
            top, span = top[sel], span[sel]
            labels = {k: v[sel] for k, v in labels.items()}
        out = {"pseudo_logits": self.pseudo_head(top), "span_mask": span, "pseudo_labels": labels}
        # the probe on the mean-pooled featurizer output (mean pooling commutes with the featurizer's linear
        # combination); detached: it reports validation UA and cannot change the encoder
        means = self.layer_statistics(batch, hidden, fm, range(self.num_layers), mean_only=True).detach()
        out["logits"] = self.probe(self.featurizer([m[:, None] for m in means.unbind(1)])[:, 0])
        return out
