"""HCLD feature extractors: encoder frames -> one utterance feature per branch (emotion X_e, speaker X_s).

HCLD (Li et al., ICASSP 2025, Sec. III-B and Fig. 1) feeds HuBERT-base frames ``x_i`` of shape
``(batch, length, dim)`` (dim 768, up to 374 frames for 7.5 s) to one of three extractors built on CNN, RNN
(BiLSTM) or Transformer layers, once for the emotion branch (``X_e``) and once for the speaker branch (``X_s``);
the two branches need not share an architecture. The paper does not give layer sizes, so the defaults below are
ours (small, 256-wide) and every size is an option.

Every extractor maps ``frames (batch, frames, input_dim)`` float and ``frame_mask (batch, frames)`` bool
(True = real frame; ``None`` = all real) to ``(batch, out_dim)``. Padded frames never influence the output: they
are zeroed before every convolution, packed away from the LSTM, excluded as attention keys, and excluded from the
masked pooling (``serkit.models.pooling``). Rows with no real frame are treated as having their first frame real.

Build by name with :func:`build_extractor`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from serkit.errors import ConfigError
from serkit.models.pooling import build_pooling


def _full_mask(frames: torch.Tensor, frame_mask: torch.Tensor | None) -> torch.Tensor:
    """Bool mask ``(batch, frames)``; rows without any real frame get frame 0 marked real (avoids NaNs)."""
    if frame_mask is None:
        return torch.ones(frames.shape[:2], dtype=torch.bool, device=frames.device)
    mask = frame_mask.to(device=frames.device, dtype=torch.bool)
    if mask.shape != frames.shape[:2]:
        raise ValueError(f"frame_mask shape {tuple(mask.shape)} does not match frames {tuple(frames.shape[:2])}")
    empty = ~mask.any(dim=1)  # (batch,)
    first = torch.zeros_like(mask)
    first[:, 0] = True
    return mask | (empty[:, None] & first)  # no branch on the data: the same in an exported graph


class _Extractor(nn.Module):
    """Shared tail: optional input LayerNorm, masked pooling, dropout, linear to ``out_dim``."""

    def __init__(self, input_dim: int, out_dim: int, pooled_dim: int, pooling: str, dropout: float,
                 input_norm: bool):
        super().__init__()
        self.input_dim, self.out_dim = int(input_dim), int(out_dim)
        self.input_norm = nn.LayerNorm(input_dim) if input_norm else nn.Identity()
        self.pool = build_pooling(pooling, pooled_dim)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.pool.output_size, out_dim))

    def encode(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, frames: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``frames (B, T, input_dim)``, ``frame_mask (B, T)`` bool -> utterance feature ``(B, out_dim)``."""
        if frames.dim() != 3 or frames.shape[-1] != self.input_dim:
            raise ValueError(f"{type(self).__name__}: expected (batch, frames, {self.input_dim}), "
                             f"got {tuple(frames.shape)}")
        mask = _full_mask(frames, frame_mask)
        x = self.input_norm(frames)
        x = x.masked_fill(~mask.unsqueeze(-1), 0.0)
        h = self.encode(x, mask)  # (B, T, pooled_dim)
        return self.head(self.pool(h, mask))


class CNNExtractor(_Extractor):
    """Stack of 1-D convolutions over time (Conv1d -> LayerNorm over channels -> ReLU -> Dropout), then pooling.

    ``channels``: output channels per conv layer (default two layers of 256); ``kernel_size`` odd (default 5,
    i.e. 100 ms of 20 ms HuBERT frames); 'same' padding. Padded frames are re-zeroed after every layer so the
    receptive field of a real frame only ever sees zeros beyond the utterance end (masking invariance).
    LayerNorm (per frame) is used instead of BatchNorm so padding and batch composition do not leak in.
    """

    def __init__(self, input_dim: int, out_dim: int, channels: Sequence[int] = (256, 256), kernel_size: int = 5,
                 dropout: float = 0.1, pooling: str = "mean", input_norm: bool = True):
        channels = [int(c) for c in channels]
        if not channels:
            raise ConfigError("extractor cnn: 'channels' needs at least one layer")
        if kernel_size % 2 != 1:
            raise ConfigError(f"extractor cnn: kernel_size must be odd, got {kernel_size}")
        super().__init__(input_dim, out_dim, channels[-1], pooling, dropout, input_norm)
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        prev = input_dim
        for c in channels:
            self.convs.append(nn.Conv1d(prev, c, kernel_size, padding=kernel_size // 2))
            self.norms.append(nn.LayerNorm(c))
            prev = c
        self.drop = nn.Dropout(dropout)

    def encode(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        keep = mask.unsqueeze(-1)
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = conv(x.transpose(1, 2)).transpose(1, 2)  # (B, T, C)
            x = self.drop(torch.relu(norm(x)))
            x = x.masked_fill(~keep, 0.0)
        return x


class LSTMExtractor(_Extractor):
    """(Bi)LSTM over the real frames (packed sequences), then masked pooling of the per-frame outputs.

    ``hidden_size`` per direction (default 128, so 256 with ``bidirectional=True``), ``num_layers`` (default 2),
    ``dropout`` between LSTM layers and before the output linear. Assumes each row's real frames are a prefix
    (lengths = ``frame_mask.sum(1)``), which is how serkit pads.
    """

    def __init__(self, input_dim: int, out_dim: int, hidden_size: int = 128, num_layers: int = 2,
                 bidirectional: bool = True, dropout: float = 0.1, pooling: str = "mean", input_norm: bool = True):
        dirs = 2 if bidirectional else 1
        super().__init__(input_dim, out_dim, dirs * hidden_size, pooling, dropout, input_norm)
        self.lstm = nn.LSTM(input_dim, hidden_size, num_layers=num_layers, batch_first=True,
                            bidirectional=bidirectional, dropout=dropout if num_layers > 1 else 0.0)

    def encode(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_exporting():  # the exported graph scores one unpadded window: nothing to pack
            return self.lstm(x)[0]
        lengths = mask.sum(dim=1).clamp_min(1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return out


class TransformerExtractor(_Extractor):
    """Linear to ``d_model`` + sinusoidal positions + ``nn.TransformerEncoder`` (pre-LN) with key padding mask.

    Defaults: ``d_model`` 256, ``num_heads`` 4, ``num_layers`` 2, ``ff_dim`` 512, ``dropout`` 0.1,
    ``max_frames`` 4096 positions (HuBERT: 50 frames/s, so ~80 s).
    """

    def __init__(self, input_dim: int, out_dim: int, d_model: int = 256, num_heads: int = 4, num_layers: int = 2,
                 ff_dim: int = 512, dropout: float = 0.1, pooling: str = "mean", input_norm: bool = True,
                 max_frames: int = 4096):
        if d_model % num_heads:
            raise ConfigError(f"extractor transformer: d_model={d_model} not divisible by num_heads={num_heads}")
        super().__init__(input_dim, out_dim, d_model, pooling, dropout, input_norm)
        self.proj = nn.Linear(input_dim, d_model)
        layer = nn.TransformerEncoderLayer(d_model, num_heads, ff_dim, dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.drop = nn.Dropout(dropout)
        pos = torch.arange(max_frames).unsqueeze(1)
        div = torch.exp(torch.arange(0, d_model, 2) * (-torch.log(torch.tensor(10000.0)) / d_model))
        pe = torch.zeros(max_frames, d_model)
        pe[:, 0::2] = torch.sin(pos * div)
        pe[:, 1::2] = torch.cos(pos * div[: d_model // 2])
        self.register_buffer("pe", pe, persistent=False)

    def encode(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if x.shape[1] > self.pe.shape[0]:
            raise ValueError(f"extractor transformer: {x.shape[1]} frames > max_frames={self.pe.shape[0]}")
        h = self.drop(self.proj(x) + self.pe[: x.shape[1]].to(x.dtype))
        return self.encoder(h, src_key_padding_mask=~mask)


EXTRACTORS: dict[str, Callable[..., _Extractor]] = {
    "cnn": CNNExtractor,
    "lstm": LSTMExtractor,
    "bilstm": LSTMExtractor,
    "transformer": TransformerExtractor,
}


def build_extractor(name: str, input_dim: int, out_dim: int, **opts) -> nn.Module:
    """Build an HCLD extractor by name (``"cnn"``, ``"lstm"``/``"bilstm"``, ``"transformer"``).

    ``input_dim``: encoder feature size (768 for HuBERT-base); ``out_dim``: utterance feature size;
    ``opts``: the class's keyword options (sizes, ``dropout``, ``pooling`` name from :mod:`serkit.models.pooling`).
    """
    if name not in EXTRACTORS:
        raise ConfigError(f"extractor: unknown {name!r}; choose one of {sorted(EXTRACTORS)}")
    try:
        return EXTRACTORS[name](input_dim, out_dim, **opts)
    except TypeError as exc:
        raise ConfigError(f"extractor {name!r}: bad options: {exc}") from None
