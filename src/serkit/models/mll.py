"""MLL's model (Wang, Geng et al., Interspeech 2025): featurizer -> frame projection -> pooling -> classifier, plus
the projections its center loss and frame-level SupCon need.

Model ``mll``: featurizer over the encoder layers -> optional frame projection -> pooling (``mean`` | ``max`` |
``flam``: ``F' = F + MSA(F)`` with 16 heads, then attention pooling, :mod:`serkit.models.flam`) -> classifier; plus
a 64-d projection ``z`` of the pooled ``f`` (``out["projection"]``, center loss) and 64-d projected frames of ``F'``
(``out["frame_projection"]``, frame-level SupCon with context broadcasting).
"""

from __future__ import annotations

import torch
from torch import nn

from serkit.encoders.featurizer import Featurizer
from serkit.errors import ConfigError
from serkit.models.frames import StandardizedFrameInput
from serkit.models.heads import ClassificationHead
from serkit.models.registry import ModelSpec, register_model

POOLINGS = ("mean", "max", "flam")


@register_model("mll")
class MLLModel(StandardizedFrameInput, nn.Module):
    """Options (config ``model:``): ``layers`` (featurizer spec, default ``weighted``), ``normalize``,
    ``proj_dim`` (frame projection width D, 256; 0 = none), ``pooling`` (``mean`` | ``max`` | ``flam``),
    ``num_heads`` (FLAM heads, 16), ``attn_dropout``, ``embed_dim`` (64, the z of the center loss),
    ``frame_embed_dim`` (64, frames for SupCon), ``hidden`` (classifier MLP sizes), ``dropout``, ``input_norm``
    (``none`` or ``standardize``: the frames z-scored with the training frames' statistics before the featurizer,
    :class:`~serkit.models.frames.StandardizedFrameInput`; with ``features.frame_norm: none``, so that the
    standardisation comes before the featurizer's LayerNorm).

    Output: ``logits`` (B, C), ``embedding`` f (B, D), ``projection`` z (B, 64), ``frames`` F' (B, T, D),
    ``frame_projection`` (B, T, 64), ``frame_mask`` (B, T).
    """

    def __init__(self, spec: ModelSpec, layers="weighted", normalize: bool = True, proj_dim: int = 256,
                 pooling: str = "flam", num_heads: int = 16, attn_dropout: float = 0.0, embed_dim: int = 64,
                 frame_embed_dim: int = 64, hidden: list[int] | None = None, dropout: float = 0.1,
                 input_norm: str = "none"):
        super().__init__()
        self.init_input_norm("mll", input_norm, spec.num_layers, spec.hidden_size)
        if spec.task != "classification":
            raise ConfigError("model mll is a classification model (task: classification)")
        if pooling not in POOLINGS:
            raise ConfigError(f"model.pooling={pooling!r}: mll supports {POOLINGS}")
        self.featurizer = Featurizer(spec.num_layers, spec.hidden_size, layers, normalize=normalize)
        d = self.featurizer.output_size
        if proj_dim:
            self.frame_proj = nn.Sequential(nn.Linear(d, proj_dim), nn.ReLU(), nn.Dropout(dropout))
            d = proj_dim
        else:
            self.frame_proj = nn.Identity()
        self.pooling_name = pooling
        if pooling == "flam":
            from serkit.models.flam import FLAM

            self.pool = FLAM(d, num_heads=num_heads, dropout=attn_dropout)
        else:
            from serkit.models.pooling import build_pooling

            self.pool = build_pooling(pooling, d)
        self.dim = d
        self.projection = nn.Linear(d, embed_dim)
        self.frame_projection = nn.Linear(d, frame_embed_dim)
        self.dropout = nn.Dropout(dropout)
        self.head = ClassificationHead(d, spec.num_outputs, hidden, dropout)

    def forward(self, batch: dict) -> dict:
        frames = self.frame_proj(self.featurizer(self.standardized(batch["features"])))
        mask = batch.get("frame_mask")
        if mask is None:
            mask = torch.ones(frames.shape[:2], dtype=torch.bool, device=frames.device)
        out = {}
        if self.pooling_name == "flam":
            res = self.pool(frames, mask, return_all=True)
            pooled, refined = res.pooled, res.frames  # (attention weights not exported: (B, T) varies by batch)
        else:
            pooled, refined = self.pool(frames, mask), frames
        out.update({
            "embedding": pooled,
            "frames": refined,
            "frame_mask": mask,
            "projection": self.projection(pooled),
            "frame_projection": self.frame_projection(refined),
            "logits": self.head(self.dropout(pooled)),
        })
        return out
