"""The upstream side of the encoder seam: one output type and one module interface for every encoder.

Every encoder takes zero-padded waveforms ``(batch, samples)`` at :data:`~serkit.constants.SAMPLE_RATE` Hz plus
their true lengths in samples, and returns *all* hidden states (input embedding layer first, top layer last),
each ``(batch, frames, dim)``, with a boolean frame mask ``(batch, frames)`` (True = a real frame).
Downstream code never touches an encoder's internals; the :class:`~serkit.encoders.featurizer.Featurizer`
picks or weights layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from serkit.constants import SAMPLE_RATE
from serkit.level import scale_to_level

#: Ways to run an encoder on input of varying length. ``native``: at the utterance's own length (Whisper without
#: its 30 s padding); ``padded``: the model's stock input shape (Whisper: 30 s zero padding).
MODES = ("native", "padded")


@dataclass
class EncoderOutput:
    """Result of one encoder forward pass.

    hidden_states: tuple of ``num_layers`` tensors ``(batch, frames, dim)``; index 0 is the input embedding layer
        (what enters the first Transformer block), index -1 the top layer.
    frame_mask: bool ``(batch, frames)``; True where the frame comes from real (unpadded) audio.
    frame_rate: frames per second (Hz).
    """

    hidden_states: tuple[torch.Tensor, ...]
    frame_mask: torch.Tensor
    frame_rate: float

    @property
    def frame_lengths(self) -> torch.Tensor:
        """Number of real frames per item, long ``(batch,)``."""
        return self.frame_mask.sum(dim=1)


class Encoder(nn.Module):
    """Base class of serkit encoders (an ``nn.Module``, so it can be fine-tuned).

    Attributes set by subclasses:
        name: canonical id (hub id, local path or ``fbank-80``).
        revision: snapshot commit hash when loaded from the Hugging Face cache, ``"local"`` for a local folder,
            ``"random"`` for a randomly initialised config, ``"none"`` for weightless encoders.
        mode: one of :data:`MODES`.
        num_layers: number of hidden states returned (Transformer blocks + 1 for the input embedding).
        hidden_size: feature dimension of every hidden state.
        frame_rate: output frames per second (Hz).
        hop_samples: input samples per output frame (``SAMPLE_RATE / frame_rate``); chunk boundaries are
            aligned to it so that stitched chunks stay on the same frame grid.
        max_samples: longest input (samples) one forward accepts, or None for no limit.
        padding_invariant: True when zero padding in a batch does not change the real frames' outputs;
            False (e.g. group-norm feature extractors) means batch only equal-length items.
        supports_time_mask: whether ``forward`` accepts ``mask_time_indices`` (HuBERT-style span masking).
    """

    name: str = "encoder"
    revision: str = "none"
    mode: str = "native"
    num_layers: int = 1
    hidden_size: int = 1
    frame_rate: float = 50.0
    hop_samples: int = 320
    max_samples: int | None = None
    padding_invariant: bool = True
    supports_time_mask: bool = False
    sample_rate: int = SAMPLE_RATE
    #: active-speech level (dBFS) every input is scaled to before encoding (:mod:`serkit.level`); None: as given
    level_db: float | None = None

    def num_frames(self, lengths: torch.Tensor) -> torch.Tensor:
        """Real output frames for inputs of ``lengths`` samples, long ``(batch,)``."""
        raise NotImplementedError

    def input_samples(self, num_samples: int) -> int:
        """Samples one item of ``num_samples`` occupies in a batch (its cost for batching)."""
        return num_samples

    def forward(
        self,
        waves: torch.Tensor,
        lengths: torch.Tensor | None = None,
        mask_time_indices: torch.Tensor | None = None,
    ) -> EncoderOutput:
        """Encode ``waves`` ``(batch, samples)`` (16 kHz, zero-padded) with true ``lengths`` ``(batch,)`` samples.

        ``mask_time_indices``: optional bool ``(batch, frames)``; True frames are replaced by the learned mask
        embedding before the Transformer (HuBERT-style span masking for fine-tuning), where supported.
        """
        raise NotImplementedError

    def forward_from(
        self,
        hidden_state: torch.Tensor,
        layer_index: int,
        frame_mask: torch.Tensor,
        mask_time_indices: torch.Tensor | None = None,
    ) -> EncoderOutput:
        """Run the Transformer blocks from hidden state ``layer_index`` on (e.g. from a cached hidden state).

        ``hidden_state`` ``(batch, frames, dim)`` is ``hidden_states[layer_index]`` of :meth:`forward` (what enters
        block ``layer_index``), ``frame_mask`` ``(batch, frames)`` bool. Returns an :class:`EncoderOutput` with the
        remaining ``num_layers - layer_index`` hidden states: index 0 is the (masked) input, -1 the top layer, as
        :meth:`forward` gives them, so ``forward_from(forward(w).hidden_states[i], i, m).hidden_states[j]`` equals
        ``forward(w).hidden_states[i + j]`` (in eval mode). ``mask_time_indices`` (bool ``(batch, frames)``)
        replaces those input frames by the encoder's learned mask embedding (span masking at this depth).
        """
        raise NotImplementedError(f"{self.name}: running from a hidden state is not supported by this encoder")

    def full_precision_modules(self) -> list[nn.Module]:
        """Parts that must stay float32 when the weights are cast (signal front ends: STFT windows, mel filters)."""
        return []

    def cast(self, dtype: torch.dtype) -> Encoder:
        """Cast the weights to ``dtype`` in place for inference (e.g. bf16), keeping
        :meth:`full_precision_modules` in float32; returns ``self``. Inputs stay float32 waveforms and outputs are
        hidden states in ``dtype``."""
        self.to(dtype)
        for m in self.full_precision_modules():
            m.float()
        return self

    def describe(self) -> dict:
        """What a cache or a trained model must record to reproduce these features."""
        return {
            "encoder": self.name,
            "revision": self.revision,
            "mode": self.mode,
            "sample_rate": self.sample_rate,
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "frame_rate": self.frame_rate,
            **({"level_db": float(self.level_db)} if self.level_db is not None else {}),
        }

    # helpers shared by subclasses -------------------------------------------------------------------------
    def _at_level(self, waves: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``waves`` scaled to :attr:`level_db` (:func:`serkit.level.scale_to_level`), or as given when it is None."""
        if self.level_db is None:
            return waves
        return scale_to_level(waves, lengths, self.level_db).to(waves.dtype)

    @staticmethod
    def _lengths_or_full(waves: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        if waves.ndim != 2:
            raise ValueError(f"expected waves of shape (batch, samples), got {tuple(waves.shape)}")
        if lengths is None:
            return torch.full((waves.shape[0],), waves.shape[1], dtype=torch.long, device=waves.device)
        lengths = torch.as_tensor(lengths, device=waves.device).long()
        if lengths.shape != (waves.shape[0],):
            raise ValueError(f"lengths must be (batch,)={waves.shape[0]}, got {tuple(lengths.shape)}")
        if int(lengths.max()) > waves.shape[1] or int(lengths.min()) <= 0:
            raise ValueError(
                f"lengths must lie in 1..{waves.shape[1]} samples, got {lengths.min().item()}..{lengths.max().item()}"
            )
        return lengths

    def _check_max(self, lengths: torch.Tensor, waves: torch.Tensor) -> None:
        # a batch no longer than the limit needs no look at the lengths (nor a data-dependent branch in export)
        if self.max_samples is None or waves.shape[1] <= self.max_samples:
            return
        if int(lengths.max()) > self.max_samples:
            raise ValueError(
                f"{self.name}: input of {int(lengths.max())} samples exceeds the encoder's limit of {self.max_samples} "
                f"({self.max_samples / self.sample_rate:.0f} s); split it into chunks (serkit.encoders.runner does)"
            )


def check_time_mask(mask_time_indices: torch.Tensor, frame_mask: torch.Tensor) -> None:
    """Refuse a span mask whose shape is not the frame mask's ``(batch, frames)``."""
    if mask_time_indices.shape != frame_mask.shape:
        raise ValueError(
            f"mask_time_indices must be (batch, frames)={tuple(frame_mask.shape)}, got {tuple(mask_time_indices.shape)}"
        )


def length_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """Bool ``(batch, size)``: True at positions ``< lengths``."""
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]
