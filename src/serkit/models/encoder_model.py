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
    """``finetune``: ``encoder.finetune`` in any form :func:`~serkit.models.finetune.resolve_finetune` accepts:
    frozen (run under no_grad), full (every encoder weight), top K blocks (plus the norm after them; the frozen
    lower part stays in eval mode, so it computes the same in every step) or LoRA adapters; with layer-wise
    learning-rate decay (:meth:`param_groups`), a warm-up of the head alone for the first epochs
    (:meth:`set_epoch`) and gradient checkpointing.

    ``adapters``: inject the LoRA adapters (training). A model folder holds the merged weights
    (:func:`~serkit.models.finetune.merge_adapters`), so prediction builds the model without them.
    ``layers``: the hidden-state indices handed to the downstream (as the cache would store them). A pooled head
    (``pooled_mlp``) gets ``pooled`` ``(batch, layers, 2*dim)`` computed from the frames as the cache computes it.
    A batch may carry ``mask_time_indices`` (bool ``(batch, frames)``) for span masking inside the encoder.
    """

    def __init__(self, encoder: nn.Module, downstream: nn.Module, layers: list[int], finetune=False,
                 adapters: bool = False):
        super().__init__()
        from serkit.models.finetune import add_lora, enable_gradient_checkpointing, resolve_finetune

        if getattr(downstream, "fits_input", False):
            raise ConfigError("the model's input has fitted operations (the nuisance projection, model.input_norm: "
                              "standardize), fitted on cached features: use features.source: cache, or drop them "
                              "with the encoder in the loop")
        self.encoder, self.downstream, self.layers = encoder, downstream, list(layers)
        self.finetune = finetune
        from serkit.models.baseline import PooledMLP

        #: the downstream reads ``batch["pooled"]`` (per-layer mean and std over frames, as the cache stores them)
        self.reads_pooled = isinstance(downstream, PooledMLP)
        self.options = opts = resolve_finetune(finetune)
        #: the epoch being trained (None: outside a training loop); before ``options.warmup_epochs`` the encoder
        #: is frozen
        self.epoch: int | None = None
        for p in self.encoder.parameters():
            p.requires_grad = False
        if opts.mode == "full":
            for p in self.encoder.parameters():
                p.requires_grad = True
        elif opts.mode == "top":
            blocks = self._blocks()
            if not 0 < opts.top_k <= len(blocks):
                raise ConfigError(f"encoder.finetune top_k={opts.top_k}: the encoder has {len(blocks)} blocks")
            for b in blocks[-opts.top_k:]:
                for p in b.parameters():
                    p.requires_grad = True
            from serkit.models.staged_encoder import _final_norm_names

            final = _final_norm_names(self.encoder)
            for name, p in self.encoder.named_parameters():
                if name in final:
                    p.requires_grad = True  # the norm after the top block (Whisper, stable-layer-norm models)
        elif opts.mode == "lora" and adapters:
            add_lora(self.encoder, opts.lora)
        if opts.trains_encoder and opts.gradient_checkpointing:
            enable_gradient_checkpointing(self.encoder)

    def _blocks(self) -> list[nn.Module]:
        from serkit.models.staged_encoder import encoder_blocks

        return encoder_blocks(self.encoder)

    @property
    def trains_encoder(self) -> bool:
        """Some encoder weight is trainable (whether or not the head's warm-up holds it frozen now)."""
        return any(p.requires_grad for p in self.encoder.parameters())

    @property
    def encoder_trains_now(self) -> bool:
        """The encoder trains in the current epoch: it has trainable weights and the head's warm-up is over."""
        warm = self.epoch is not None and self.epoch < self.options.warmup_epochs
        return self.trains_encoder and not warm

    def set_epoch(self, epoch: int) -> None:
        """Called at the start of every training epoch (:class:`~serkit.train.module.SERModule`): during the
        first ``warmup_epochs`` the encoder runs frozen, in eval mode, and gets no gradient (so the optimiser
        leaves its weights alone)."""
        self.epoch = int(epoch)
        self.train(self.training)

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """The optimiser's parameter groups: one group of every trainable parameter, or with
        ``layer_decay < 1`` the head at ``lr`` and the encoder's parameters at ``lr`` times their layer's factor
        (:func:`~serkit.models.finetune.layer_scales`), one group per factor."""
        trainable = [p for p in self.parameters() if p.requires_grad]
        decay = self.options.layer_decay
        if decay == 1.0 or not self.trains_encoder:
            return [{"params": trainable, "lr": lr, "weight_decay": weight_decay}]
        from serkit.models.finetune import layer_scales

        scales = layer_scales(self.encoder, decay)
        by_scale: dict[float, list] = {}
        for p in trainable:
            by_scale.setdefault(scales.get(id(p), 1.0), []).append(p)
        return [{"params": ps, "lr": lr * s, "weight_decay": weight_decay}
                for s, ps in sorted(by_scale.items(), reverse=True)]

    def encode(self, batch: dict) -> dict:
        waves, lengths = batch["waveform"], batch["lengths"]
        mask = batch.get("mask_time_indices")
        kw = {"mask_time_indices": mask} if mask is not None else {}
        if self.encoder_trains_now and self.training:
            out = self.encoder(waves, lengths, **kw)
        else:
            with torch.no_grad():
                out = self.encoder(waves, lengths, **kw)
        # speaker normalisation of the encoder's outputs (the feature stage attaches each item's statistics, per
        # stored layer; the cache holds every hidden state, so hidden state i is row i)
        from serkit.data.normalize import normalize_hidden

        feats = torch.stack([normalize_hidden(out.hidden_states[i], batch, i) for i in self.layers], dim=1)
        enc = {**batch, "features": feats, "frame_mask": out.frame_mask}
        if self.reads_pooled:
            enc["pooled"] = masked_pooled_statistics(feats, out.frame_mask)
        return enc

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.encoder_trains_now:
            self.encoder.eval()  # frozen encoder (or the head's warm-up): no dropout
        elif self.options.mode == "top":
            self.encoder.eval()  # the frozen lower part deterministic; the trainable top blocks follow `mode`
            for b in self._blocks()[-self.options.top_k:]:
                b.train(mode)
        return self

    def forward(self, batch: dict) -> dict:
        if "features" not in batch:
            batch = self.encode(batch)
        out = self.downstream(batch)
        out.setdefault("frame_mask", batch["frame_mask"])
        return out


def masked_pooled_statistics(feats: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """Per-layer mean then standard deviation over each item's real frames, in float32:
    ``(batch, layers, frames, dim)`` and ``(batch, frames)`` bool -> ``(batch, layers, 2*dim)`` (what
    :func:`serkit.features.pooling.pooled_statistics` stores for one item)."""
    x = feats.float()
    m = frame_mask.to(x.dtype)[:, None, :, None]  # (batch, 1, frames, 1)
    n = m.sum(dim=2).clamp_min(1.0)
    mean = (x * m).sum(dim=2) / n
    dev = (x - mean[:, :, None]) * m
    std = ((dev * dev).sum(dim=2) / n).clamp_min(1e-12).sqrt()  # no infinite gradient for a 1-frame item
    return torch.cat([mean, std], dim=-1)
