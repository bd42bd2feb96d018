"""Log-mel filterbank "encoder": no weights, one layer, 100 Hz frames.

25 ms Hann window (400 samples), 10 ms hop (160 samples), 512-point FFT, HTK-scale triangular filters 20 Hz to
7.6 kHz, natural log of the power with a floor of 1e-6. Frame ``t`` is centred on sample ``160 t``; an input of
``n`` samples has ``n // 160 + 1`` frames. Zero padding does not change real frames.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from serkit.constants import SAMPLE_RATE
from serkit.encoders.base import Encoder, EncoderOutput, length_mask

WIN = 400
HOP = 160
N_FFT = 512


class FbankEncoder(Encoder):
    """Log-mel filterbank as an encoder with ``num_layers == 1``: hidden_states = ``((batch, frames, n_mels),)``."""

    def __init__(self, n_mels: int = 80, *, f_min: float = 20.0, f_max: float = 7600.0, mode: str = "native"):
        super().__init__()
        from transformers.audio_utils import mel_filter_bank

        filters = mel_filter_bank(
            num_frequency_bins=N_FFT // 2 + 1,
            num_mel_filters=n_mels,
            min_frequency=f_min,
            max_frequency=f_max,
            sampling_rate=SAMPLE_RATE,
            mel_scale="htk",
        )  # (freq, n_mels)
        self.register_buffer(
            "filters", torch.as_tensor(filters, dtype=torch.float32).T.clone(), persistent=False
        )
        self.register_buffer("window", torch.hann_window(WIN), persistent=False)
        self.name = f"fbank-{n_mels}"
        self.revision = "none"
        self.mode = mode
        self.num_layers = 1
        self.hidden_size = n_mels
        self.hop_samples = HOP
        self.frame_rate = SAMPLE_RATE / HOP

    def full_precision_modules(self) -> list[nn.Module]:
        return [self]  # no weights: the filterbank always runs in float32

    def num_frames(self, lengths: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(lengths).long() // HOP + 1

    def forward(
        self,
        waves: torch.Tensor,
        lengths: torch.Tensor | None = None,
        mask_time_indices: torch.Tensor | None = None,
    ) -> EncoderOutput:
        lengths = self._lengths_or_full(waves, lengths)
        waves = self._at_level(waves, lengths)
        with torch.autocast(device_type=waves.device.type, enabled=False):
            x = waves.float() * length_mask(lengths, waves.shape[1])
            x = F.pad(x, (0, N_FFT // 2))  # so that the centre padding reflects zeros at the right edge
            spec = torch.stft(x, N_FFT, HOP, win_length=WIN, window=self.window.float(), return_complex=True)
            n = waves.shape[1] // HOP + 1
            power = spec[..., :n].abs() ** 2  # (batch, freq, frames)
            feats = torch.log(torch.clamp(torch.matmul(self.filters.float(), power), min=1e-6)).transpose(1, 2)
        frame_mask = length_mask(self.num_frames(lengths), n)
        if mask_time_indices is not None:
            feats = feats.masked_fill(mask_time_indices[..., None], 0.0)
        return EncoderOutput(hidden_states=(feats,), frame_mask=frame_mask, frame_rate=self.frame_rate)
