"""HCLD's two-branch model (Li et al., ICASSP 2025): emotion and speaker extractors over shared frames.

Model ``hcld`` (config ``model: {name: hcld, ...}``)::

    cached encoder layers (batch, layers, T, D), pooled and cropped by the runner's feature stage
    (features.pool_frames, features.max_frames)
      -> Featurizer (layer pick / learned weighted sum, optional per-layer LayerNorm)
      -> [pad to pad_frames zero frames (the paper's fixed-length input), optional]
      -> emotion extractor  -> X_e (batch, dim) -> linear emotion classifier   -> "logits"
      -> speaker extractor  -> X_s (batch, dim) -> linear speaker classifier   -> "speaker_logits"
         (cnn | lstm | transformer each, see serkit.models.extractors; the two may differ)

Out keys: ``logits``, ``speaker_logits`` (training speakers, ``ModelSpec.num_speakers``),
``emotion_features`` (X_e), ``speaker_features`` (X_s), ``embedding`` (= X_e), ``frame_mask``.
``speaker_extractor: none`` drops the speaker branch (the "emotion only" baseline of Table II).

Fixed length. The paper crops/pads the *waveform* to 7.5 s before HuBERT. The feature cache holds frames of the
whole utterance (50 Hz), so the crop happens on frames, in the feature stage: ``features.max_frames: 375`` crops
longer utterances (a random window in training, the centre window in evaluation) and ``features.pool_frames: k``
averages k frames first (50 Hz -> 50/k Hz; ``max_frames`` counts pooled frames). Shorter utterances stay short
with their padding masked out of every extractor (the output does not depend on padding), unless the model's
``pad_frames: n`` pads every utterance to exactly n zero frames that count as real (the paper's fixed-length
input; padded frames of a cached encoder are zeros, not the encoder's response to silence).
"""

from __future__ import annotations

import torch
from torch import nn

from serkit.encoders.featurizer import Featurizer
from serkit.errors import ConfigError
from serkit.models.extractors import build_extractor
from serkit.models.frames import StandardizedFrameInput, crop_pad_frames
from serkit.models.registry import ModelSpec, register_model


@register_model("hcld")
class HCLDModel(StandardizedFrameInput, nn.Module):
    """HCLD two-branch model; see the module docstring. Options (config ``model:``):

    ``emotion_extractor`` (cnn | lstm | transformer, default cnn), ``speaker_extractor`` (same choices, default:
    the emotion one; ``none`` = no speaker branch), ``dim`` (size of X_e and X_s, default 256), ``layers``
    (featurizer spec, default ``weighted``), ``normalize`` (LayerNorm each layer, default true), ``extractor_opts``
    (``{arch: {option: value}}`` applied to any branch of that architecture, e.g. ``{cnn: {channels: [128]}}``),
    ``emotion_opts`` / ``speaker_opts`` (per-branch options, applied last), ``dropout`` (before the classifiers),
    ``pad_frames`` (pad to this many zero frames marked real; default none: padding masked), ``input_norm``
    (``none``, default, or ``standardize``: every layer and dimension z-scored with the training frames' statistics,
    fitted before training, :class:`~serkit.models.frames.FrameStandardizer`; for global features, where no speaker
    normalisation standardises them). Cropping and time pooling are the feature stage's (``features.max_frames``,
    ``features.pool_frames``).
    """

    def __init__(self, spec: ModelSpec, emotion_extractor: str = "cnn", speaker_extractor: str | None = None,
                 dim: int = 256, layers="weighted", normalize: bool = True, extractor_opts: dict | None = None,
                 emotion_opts: dict | None = None, speaker_opts: dict | None = None, dropout: float = 0.1,
                 pad_frames: int | None = None, input_norm: str = "none"):
        super().__init__()
        self.init_input_norm("hcld", input_norm, spec.num_layers, spec.hidden_size)
        if spec.task != "classification":
            raise ConfigError("model hcld: classification only (emotion classes + speaker classes)")
        if pad_frames is not None and (not isinstance(pad_frames, int) or pad_frames < 1):
            raise ConfigError(f"model hcld: pad_frames must be a positive integer or null, got {pad_frames!r}")
        speaker_extractor = emotion_extractor if speaker_extractor is None else speaker_extractor
        self.featurizer = Featurizer(spec.num_layers, spec.hidden_size, layers, normalize=normalize)
        d_in = self.featurizer.output_size
        self.pad_frames = pad_frames
        per_arch = dict(extractor_opts or {})

        def opts(arch: str, own: dict | None) -> dict:
            return {**dict(per_arch.get(arch, {})), **dict(own or {})}

        self.emotion_arch, self.speaker_arch = emotion_extractor, speaker_extractor
        self.emotion_extractor = build_extractor(emotion_extractor, d_in, dim, **opts(emotion_extractor, emotion_opts))
        self.drop = nn.Dropout(dropout)
        self.emotion_classifier = nn.Linear(dim, spec.num_outputs)
        self.speaker_extractor = self.speaker_classifier = None
        if speaker_extractor not in (None, "none", False):
            self.speaker_extractor = build_extractor(speaker_extractor, d_in, dim,
                                                     **opts(speaker_extractor, speaker_opts))
            if spec.num_speakers:
                self.speaker_classifier = nn.Linear(dim, spec.num_speakers)

    def frames(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder layers -> featurized (padded) frames ``(B, T', d)`` and mask ``(B, T')``."""
        x = self.featurizer(self.standardized(batch["features"]))
        if self.pad_frames is None:
            mask = batch.get("frame_mask")
            return x, (mask.bool() if mask is not None else torch.ones(x.shape[:2], dtype=torch.bool))
        return crop_pad_frames(x, batch.get("frame_mask"), self.pad_frames, "zeros", train=self.training)

    def forward(self, batch: dict) -> dict:
        x, mask = self.frames(batch)
        xe = self.emotion_extractor(x, mask)
        out = {"emotion_features": xe, "embedding": xe, "logits": self.emotion_classifier(self.drop(xe)),
               "frame_mask": mask}
        if self.speaker_extractor is not None:
            xs = self.speaker_extractor(x, mask)
            out["speaker_features"] = xs
            if self.speaker_classifier is not None:
                out["speaker_logits"] = self.speaker_classifier(self.drop(xs))
        return out
