"""An encoder inside the model, run from waveforms or from a cached hidden state, with a choice of trainable blocks.

Two sources (what the batch carries):

* ``"waveform"``: ``batch["waveform"] (B, S)`` and ``batch["lengths"] (B,)``; the whole encoder runs, ``finetune``
  is ``False`` (frozen), ``True`` (every weight) or ``"top:K"`` (the top K blocks, plus the final norm and the mask
  embedding); span masking goes to the encoder's own ``mask_time_indices`` (its front-end output).
* ``"cache"``: ``batch["features"] (B, 1, T, D)`` holds hidden state ``start = num_layers - 1 - K`` from the feature
  cache and ``batch["frame_mask"]``; only the top ``K`` blocks run (``Encoder.forward_from``) and train. The lower
  blocks are frozen and deterministic in eval mode, so this is exactly ``"top:K"`` fine-tuning without re-running
  them. ``K = 0``: the cached top layer is used as it is (frozen encoder). Span masking then replaces frames of
  hidden state ``start`` (the input of the trainable blocks), not of the CNN / conv front end.

``forward(batch, mask_time_indices=None) -> EncoderOutput`` whose ``hidden_states[j]`` is the encoder's hidden
state ``first_layer + j`` (``first_layer`` = 0 for waveforms, ``start`` for the cache); ``[-1]`` is the top layer.
"""

from __future__ import annotations

import torch
from torch import nn

from serkit.encoders.base import Encoder, EncoderOutput, length_mask
from serkit.errors import ConfigError

#: Encoder parameters outside the blocks that train with the top blocks (final norms, mask embeddings).
_TOP_EXTRAS = ("mask_embedding", "masked_spec_embed")


def encoder_blocks(encoder: nn.Module) -> list[nn.Module]:
    """The Transformer blocks of an encoder (the ``ModuleList`` named ``...encoder.layers``), bottom first."""
    for name, mod in encoder.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0 and (name == "layers" or name.endswith("encoder.layers")):
            return list(mod)
    raise ConfigError(f"{getattr(encoder, 'name', encoder.__class__.__name__)}: no list of Transformer layers found")


def _final_norm_names(encoder: nn.Module) -> set[str]:
    """Parameter names of the norm applied after the top block (Whisper, stable-layer-norm SSL models)."""
    names = set()
    for name, mod in encoder.named_modules():
        if name.endswith("encoder") and hasattr(mod, "layers") and isinstance(getattr(mod, "layer_norm", None),
                                                                              nn.LayerNorm):
            post = "Whisper" in type(mod).__name__ or "StableLayerNorm" in type(mod).__name__
            if post:
                names |= {f"{name}.layer_norm.{p}" for p, _ in mod.layer_norm.named_parameters()}
    return names


def parse_finetune(finetune, num_blocks: int) -> int:
    """``False``/``None``/``"none"`` -> 0, ``True`` -> all blocks (-1), ``"top:K"`` or int K -> K."""
    if finetune in (False, None, "none", 0):
        return 0
    if finetune is True:
        return -1
    if isinstance(finetune, int):
        k = finetune
    elif isinstance(finetune, str) and finetune.startswith("top:"):
        k = int(finetune.split(":", 1)[1])
    else:
        raise ConfigError(f"finetune must be false, true, 'top:K' or an int, got {finetune!r}")
    if not 0 <= k <= num_blocks:
        raise ConfigError(f"finetune={finetune!r}: the encoder has {num_blocks} blocks")
    return k


class StagedEncoder(nn.Module):
    """See the module docstring. ``top_k``: trainable top blocks (``-1`` = all weights, waveform source only)."""

    def __init__(self, encoder: Encoder, source: str = "cache", finetune=False):
        super().__init__()
        if source not in ("cache", "waveform"):
            raise ConfigError(f"StagedEncoder: source must be 'cache' or 'waveform', got {source!r}")
        self.encoder, self.source = encoder, source
        blocks = encoder_blocks(encoder)
        self.num_blocks = len(blocks)
        self.top_k = parse_finetune(finetune, self.num_blocks)
        if source == "cache" and self.top_k < 0:
            raise ConfigError("full fine-tuning (finetune: true) needs features.source: waveform; "
                              "from the cache use top:K")
        #: first hidden-state index the model sees (cache: the stored layer it starts from)
        self.first_layer = 0 if source == "waveform" else encoder.num_layers - 1 - self.top_k
        for p in encoder.parameters():
            p.requires_grad = self.top_k < 0
        if self.top_k > 0:
            for b in blocks[-self.top_k:]:
                for p in b.parameters():
                    p.requires_grad = True
            final = _final_norm_names(encoder)
            for name, p in encoder.named_parameters():
                if name in final or name.split(".")[-1] in _TOP_EXTRAS:
                    p.requires_grad = True

    @property
    def trains(self) -> bool:
        return any(p.requires_grad for p in self.encoder.parameters())

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.trains:
            self.encoder.eval()
        elif self.source == "cache" or self.top_k > 0:
            self.encoder.eval()  # frozen lower part deterministic; the trainable top blocks follow `mode`
            for b in encoder_blocks(self.encoder)[self.num_blocks - self.top_k:]:
                b.train(mode)
        return self

    def frame_mask(self, batch: dict) -> torch.Tensor:
        """(B, T) bool of the frames this encoder will return for ``batch`` (before running it)."""
        if self.source == "cache":
            return batch["frame_mask"].bool()
        waves, lengths = batch["waveform"], batch["lengths"]
        width = self.encoder.input_samples(waves.shape[1]) if self.encoder.mode == "padded" else waves.shape[1]
        n = int(self.encoder.num_frames(torch.tensor([width]))[0])
        return length_mask(self.encoder.num_frames(lengths.cpu()).to(waves.device), n)

    def forward(self, batch: dict, mask_time_indices: torch.Tensor | None = None) -> EncoderOutput:
        grad = self.trains and self.training
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            if self.source == "waveform":
                kw = {"mask_time_indices": mask_time_indices} if mask_time_indices is not None else {}
                return self.encoder(batch["waveform"], batch["lengths"], **kw)
            feats = batch["features"]
            if feats.ndim != 4 or feats.shape[1] != 1:
                raise ValueError(f"StagedEncoder (cache): expected features (batch, 1, frames, dim) of hidden state "
                                 f"{self.first_layer}, got {tuple(feats.shape)}")
            h, fm = feats[:, 0], batch["frame_mask"].bool()
            if self.top_k == 0:
                if mask_time_indices is not None:
                    raise ConfigError("span masking from the cache needs trainable blocks (top:K with K >= 1)")
                return EncoderOutput(hidden_states=(h,), frame_mask=fm, frame_rate=self.encoder.frame_rate)
            return self.encoder.forward_from(h, self.first_layer, fm, mask_time_indices)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Parameters that train (what a stage changes), by name within this module."""
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}
