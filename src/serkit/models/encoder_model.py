"""Encoder in the loop: run the upstream encoder on waveforms inside the model, then the downstream model.

Used when ``features.source: waveform`` — for waveform augmentations (mixup before the encoder) and for encoder
fine-tuning. The downstream receives exactly what it would get from the feature cache: ``features``
``(batch, layers, frames, dim)`` and ``frame_mask``; it never touches the encoder's internals.
"""

from __future__ import annotations

import torch
from torch import nn

from serkit.errors import ConfigError


class EncoderDownstream(nn.Module):
    """``finetune``: ``False`` (frozen encoder, run under no_grad), ``True`` (all encoder weights trained), or
    ``"top:K"`` (only the top K Transformer blocks train; fewer activations kept for the backward pass).

    ``layers``: the hidden-state indices handed to the downstream (as the cache would store them).
    A batch may carry ``mask_time_indices`` (bool ``(batch, frames)``) for span masking inside the encoder.
    """

    def __init__(self, encoder: nn.Module, downstream: nn.Module, layers: list[int], finetune=False):
        super().__init__()
        self.encoder, self.downstream, self.layers = encoder, downstream, list(layers)
        self.finetune = finetune
        for p in self.encoder.parameters():
            p.requires_grad = False
        if finetune is True:
            for p in self.encoder.parameters():
                p.requires_grad = True
        elif isinstance(finetune, str) and finetune.startswith("top:"):
            k = int(finetune.split(":", 1)[1])
            blocks = self._blocks()
            if not 0 < k <= len(blocks):
                raise ConfigError(f"encoder.finetune={finetune!r}: the encoder has {len(blocks)} blocks")
            for b in blocks[-k:]:
                for p in b.parameters():
                    p.requires_grad = True
            from serkit.models.staged_encoder import _final_norm_names

            final = _final_norm_names(self.encoder)
            for name, p in self.encoder.named_parameters():
                if name in final:
                    p.requires_grad = True  # the norm after the top block (Whisper, stable-layer-norm models)
        elif finetune not in (False, None, "none"):
            raise ConfigError(f"encoder.finetune must be false, true or 'top:K', got {finetune!r}")

    def _blocks(self) -> list[nn.Module]:
        from serkit.models.staged_encoder import encoder_blocks

        return encoder_blocks(self.encoder)

    @property
    def trains_encoder(self) -> bool:
        return any(p.requires_grad for p in self.encoder.parameters())

    def encode(self, batch: dict) -> dict:
        waves, lengths = batch["waveform"], batch["lengths"]
        mask = batch.get("mask_time_indices")
        kw = {"mask_time_indices": mask} if mask is not None else {}
        if self.trains_encoder and self.training:
            out = self.encoder(waves, lengths, **kw)
        else:
            with torch.no_grad():
                out = self.encoder(waves, lengths, **kw)
        # speaker normalisation of the encoder's outputs (the feature stage attaches each item's statistics, per
        # stored layer; the cache holds every hidden state, so hidden state i is row i)
        from serkit.data.normalize import normalize_hidden

        feats = torch.stack([normalize_hidden(out.hidden_states[i], batch, i) for i in self.layers], dim=1)
        return {**batch, "features": feats, "frame_mask": out.frame_mask}

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.trains_encoder:
            self.encoder.eval()  # frozen encoder: no dropout
        return self

    def forward(self, batch: dict) -> dict:
        if "features" not in batch:
            batch = self.encode(batch)
        out = self.downstream(batch)
        out.setdefault("frame_mask", batch["frame_mask"])
        return out
