"""Whisper's encoder (never the decoder), at the utterance's own length or with the stock 30 s padding.

The stock encoder only accepts 3000 mel frames (30 s) and adds all 1500 positional embeddings. In ``native``
mode serkit runs the same layers on the real length: it adds only the first ``frames`` positional embeddings
(the full table stays in place, sliced per batch) and masks padded frames in self-attention, so a padded batch
gives the same result as one file at a time; without autograd (feature extraction, prediction) bit for bit: the
front end and the attention then run per item at its own length, only the row-wise projections and feed-forwards
see the whole batch. In ``padded`` mode it reproduces the stock behaviour (30 s of zero
padding, no attention mask) and only marks frames beyond the real length in ``frame_mask``.

Frames: log-mel at 100 Hz (hop 160 samples) -> conv stride 2 -> 50 Hz (hop 320 samples).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from serkit.constants import SAMPLE_RATE
from serkit.encoders.base import Encoder, EncoderOutput, check_time_mask, length_mask

#: Whisper's STFT: 25 ms window, 10 ms hop at 16 kHz.
N_FFT = 400
MEL_HOP = 160


class WhisperLogMel(nn.Module):
    """Whisper's log-mel spectrogram in torch, equal to ``WhisperFeatureExtractor`` on the real frames.

    Input ``(batch, samples)`` zero-padded, ``lengths`` ``(batch,)`` samples. Output ``(batch, n_mels, T)`` with
    ``T = samples // 160`` and real mel frames ``lengths // 160``. The dynamic-range clamp (max - 8) uses each
    item's real frames only, so the result does not depend on the batch's padding.
    """

    def __init__(self, mel_filters: np.ndarray):
        super().__init__()
        # (n_freq=201, n_mels) as in WhisperFeatureExtractor.mel_filters
        self.register_buffer(
            "mel_filters",
            torch.as_tensor(np.asarray(mel_filters), dtype=torch.float32).T.clone(),
            persistent=False,
        )
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)

    @property
    def n_mels(self) -> int:
        return int(self.mel_filters.shape[0])

    def forward(self, waves: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(device_type=waves.device.type, enabled=False):
            x = waves.float()
            # Zero samples after the end (as the stock 30 s padding has), also at the batch's right edge,
            # so that the centre padding reflects zeros there for every item.
            x = x * length_mask(lengths, x.shape[1]).to(x.dtype)
            x = F.pad(x, (0, N_FFT // 2))
            stft = torch.stft(x, N_FFT, MEL_HOP, window=self.window.float(), return_complex=True)
            n_frames = waves.shape[1] // MEL_HOP
            power = (stft[..., :n_frames].abs() ** 2).contiguous()  # (batch, freq, T)
            mel = torch.matmul(self.mel_filters.float(), power)  # (batch, n_mels, T)
            log_spec = torch.clamp(mel, min=1e-10).log10()
            mel_lengths = torch.clamp(lengths // MEL_HOP, min=1)
            valid = length_mask(mel_lengths, n_frames)[:, None, :]
            peak = log_spec.masked_fill(~valid, float("-inf")).amax(dim=(1, 2), keepdim=True)
            log_spec = torch.maximum(log_spec, peak - 8.0)
            log_spec = (log_spec + 4.0) / 4.0
        return log_spec, mel_lengths


class WhisperSpeechEncoder(Encoder):
    """Wraps a ``transformers`` ``WhisperEncoder``; see the module docstring for ``native`` vs ``padded``.

    ``hidden_states``: ``encoder_layers + 1`` tensors ``(batch, frames, d_model)``: conv + positions first, the
    final layer norm applied to the last one (as ``transformers`` returns them). Frames at 50 Hz.
    """

    supports_time_mask = True

    def __init__(self, encoder: nn.Module, mel_filters: np.ndarray, *, name: str, revision: str, mode: str):
        super().__init__()
        if mode not in ("native", "padded"):
            raise ValueError(f"Whisper mode must be 'native' or 'padded', got {mode!r}")
        self.encoder = encoder
        self.logmel = WhisperLogMel(mel_filters)
        cfg = encoder.config
        if self.logmel.n_mels != cfg.num_mel_bins:
            raise ValueError(
                f"{name}: mel filters have {self.logmel.n_mels} bins, model expects {cfg.num_mel_bins}"
            )
        self.name, self.revision, self.mode = name, revision, mode
        self.num_layers = cfg.encoder_layers + 1
        self.hidden_size = cfg.d_model
        self.max_positions = int(encoder.embed_positions.num_embeddings)
        self.mel_stride = encoder.conv1.stride[0] * encoder.conv2.stride[0]
        self.hop_samples = MEL_HOP * self.mel_stride
        self.frame_rate = SAMPLE_RATE / self.hop_samples
        self.max_samples = self.max_positions * self.hop_samples
        self.padding_invariant = True
        #: learned embedding that replaces masked frames (HuBERT-style span masking when fine-tuning)
        self.mask_embedding = nn.Parameter(torch.zeros(cfg.d_model))

    def full_precision_modules(self) -> list[nn.Module]:
        return [self.logmel]

    def num_frames(self, lengths: torch.Tensor) -> torch.Tensor:
        mel = torch.clamp(torch.as_tensor(lengths).long() // MEL_HOP, min=1)
        for conv in (self.encoder.conv1, self.encoder.conv2):
            k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
            mel = (mel + 2 * p - k) // s + 1
        return mel

    def input_samples(self, num_samples: int) -> int:
        return self.max_samples if self.mode == "padded" else num_samples

    def forward(
        self,
        waves: torch.Tensor,
        lengths: torch.Tensor | None = None,
        mask_time_indices: torch.Tensor | None = None,
    ) -> EncoderOutput:
        # without lengths every frame is real: no attention mask (and no data-dependent branch in graph export)
        unpadded = lengths is None
        lengths = self._lengths_or_full(waves, lengths)
        self._check_max(lengths, waves)
        waves = self._at_level(waves, lengths)
        enc = self.encoder
        if self.mode == "padded":
            waves = F.pad(waves, (0, self.max_samples - waves.shape[1]))
        native = self.mode == "native"
        if native and waves.shape[0] > 1 and not self.training and not torch.is_grad_enabled():
            # inference on a padded batch: the front end runs per item at its own length (as the blocks'
            # attention does, _inference_attention), so that an item's features are bit for bit what it gives
            # alone, whatever its batch neighbours (padding changes the kernels' float rounding)
            n_all = int(self.num_frames(torch.tensor([waves.shape[1]]))[0])
            x = waves.new_zeros(waves.shape[0], n_all, self.hidden_size, dtype=enc.conv1.weight.dtype)
            for j, length in enumerate(lengths.tolist()):
                one = self._front(waves[j : j + 1, :length], lengths[j : j + 1], native)
                x[j, : one.shape[1]] = one[0]
        else:
            x = self._front(waves, lengths, native)
        n = x.shape[1]
        if n > self.max_positions:
            raise ValueError(f"{self.name}: {n} frames exceed the {self.max_positions} positional embeddings")
        frame_mask = length_mask(self.num_frames(lengths), n)
        if mask_time_indices is not None:
            check_time_mask(mask_time_indices, frame_mask)
            x = torch.where(mask_time_indices[..., None], self.mask_embedding.to(x.dtype), x)
        hidden = x + enc.embed_positions.weight[:n].to(x.dtype)  # first n positions of the full table
        hidden = F.dropout(hidden, p=enc.dropout, training=self.training)
        states = self._run_blocks(hidden, frame_mask, 0, unpadded=unpadded)
        return EncoderOutput(hidden_states=tuple(states), frame_mask=frame_mask, frame_rate=self.frame_rate)

    def _front(self, waves: torch.Tensor, lengths: torch.Tensor, native: bool) -> torch.Tensor:
        """Log-mel and the two convolutions: ``(batch, samples)`` -> ``(batch, frames, d_model)`` at 50 Hz."""
        enc = self.encoder
        mel, mel_lengths = self.logmel(waves, lengths)  # (batch, n_mels, T)
        mel = mel.to(enc.conv1.weight.dtype)
        if native:  # zero beyond the end, as the convs' own zero padding does for a single file
            mel_mask = length_mask(mel_lengths, mel.shape[-1])[:, None, :]
            mel = mel * mel_mask
            x = F.gelu(enc.conv1(mel)) * mel_mask
        else:
            x = F.gelu(enc.conv1(mel))
        x = F.gelu(enc.conv2(x)).permute(0, 2, 1)  # (batch, frames, d_model)
        return x

    def _run_blocks(self, hidden: torch.Tensor, frame_mask: torch.Tensor, start: int,
                    unpadded: bool = False) -> list[torch.Tensor]:
        """``[hidden, block start output, ..., final layer norm(top block output)]``; ``unpadded``: the caller
        knows every frame is real (no attention mask needed)."""
        enc = self.encoder
        attn_mask = None
        # an exported graph scores one unpadded window (serkit.export): every frame is real, no mask to build
        unpadded = unpadded or torch.compiler.is_exporting()
        if self.mode == "native" and not unpadded and not bool(frame_mask.all()):
            if enc.config._attn_implementation == "eager":
                attn_mask = torch.zeros(frame_mask.shape, dtype=hidden.dtype, device=hidden.device)
                attn_mask = attn_mask.masked_fill(~frame_mask, torch.finfo(hidden.dtype).min)[
                    :, None, None, :
                ]
            else:  # sdpa / flash: boolean, True = attend
                attn_mask = frame_mask[:, None, None, :]
        # the fused inference block loops over row chunks (a Python loop over a length): not in graph export
        # (LoRA adapters in the blocks, see serkit.models.finetune: their projections run as modules, not fused)
        fast = not self.training and not torch.is_grad_enabled() and not torch.compiler.is_exporting() \
            and not getattr(self, "has_adapters", False)
        if fast:  # the residual stream stays float32 when the weights are bf16 (see _inference_block)
            hidden = hidden.float()
        states = [hidden]
        for layer in enc.layers[start:]:
            if self.training and enc.layerdrop > 0.0 and torch.rand([]) < enc.layerdrop:
                states.append(hidden)
                continue
            hidden = _inference_block(layer, hidden, attn_mask) if fast else layer(hidden, attn_mask)
            states.append(hidden)
        states[-1] = _layer_norm(enc.layer_norm, hidden) if fast else enc.layer_norm(hidden)
        return states

    def forward_from(
        self,
        hidden_state: torch.Tensor,
        layer_index: int,
        frame_mask: torch.Tensor,
        mask_time_indices: torch.Tensor | None = None,
    ) -> EncoderOutput:
        """Blocks ``layer_index..`` on ``hidden_state`` (see :meth:`Encoder.forward_from`); ``0 <= layer_index <
        num_layers - 1`` (the top hidden state already has the final layer norm applied).

        Masked frames become ``mask_embedding + positional embedding`` of the frame: at ``layer_index == 0`` this
        is exactly what :meth:`forward` does with ``mask_time_indices``; deeper, the positional term keeps masked
        frames distinguishable (Whisper's blocks have no other position information).
        """
        enc = self.encoder
        if not 0 <= layer_index < len(enc.layers):
            raise ValueError(f"{self.name}: layer_index must lie in 0..{len(enc.layers) - 1}, got {layer_index}")
        hidden = hidden_state.to(enc.conv1.weight.dtype)
        n = hidden.shape[1]
        if frame_mask.shape != hidden.shape[:2]:
            raise ValueError(f"frame_mask must be (batch, frames)={tuple(hidden.shape[:2])}, "
                             f"got {tuple(frame_mask.shape)}")
        if mask_time_indices is not None:
            check_time_mask(mask_time_indices, frame_mask)
            fill = self.mask_embedding.to(hidden.dtype) + enc.embed_positions.weight[:n].to(hidden.dtype)
            hidden = torch.where(mask_time_indices[..., None].to(hidden.device), fill[None], hidden)
        if layer_index == 0:
            hidden = F.dropout(hidden, p=enc.dropout, training=self.training)
        states = self._run_blocks(hidden, frame_mask.bool(), layer_index)
        return EncoderOutput(hidden_states=tuple(states), frame_mask=frame_mask.bool(), frame_rate=self.frame_rate)


#: Rows per feed-forward chunk in inference: fc1's output chunk (rows x ffn_dim float32) stays in cache.
FFN_CHUNK_ROWS = 512


def _inference_attention(attn: nn.Module, hidden: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
    """``WhisperAttention`` (self-attention, no cache) with one fused q/k/v projection and no layout copies.

    ``hidden`` ``(batch, frames, d_model)``; ``attn_mask`` ``(batch, 1, 1, frames)``, boolean (True = attend) or
    additive (0 = attend), or None; frames past an item's length must be masked (right padding). Same arithmetic as
    ``transformers``: queries scaled after their projection, softmax scale 1.
    """
    batch, frames, dim = hidden.shape
    heads = attn.num_heads
    weight = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
    k_bias = attn.k_proj.bias if attn.k_proj.bias is not None else torch.zeros_like(attn.q_proj.bias)
    bias = torch.cat([attn.q_proj.bias, k_bias, attn.v_proj.bias])
    qkv = F.linear(hidden, weight, bias).view(batch, frames, 3, heads, dim // heads)
    q = (qkv[:, :, 0] * attn.scaling).transpose(1, 2)  # (batch, heads, frames, head_dim)
    k, v = qkv[:, :, 1].transpose(1, 2), qkv[:, :, 2].transpose(1, 2)
    if attn_mask is None:
        out = F.scaled_dot_product_attention(q, k, v, scale=1.0)
    else:
        # each item attends over its own frames only, at its own length: a padded key axis (even fully masked)
        # changes the kernel's float rounding, so a clip's features would depend on its batch's longest clip;
        # padded query rows get zeros (their frames are dropped by the frame mask)
        keep = attn_mask if attn_mask.dtype == torch.bool else attn_mask == 0
        lengths = keep.reshape(batch, frames).sum(dim=1).tolist()
        out = q.new_zeros(q.shape)
        for j, n in enumerate(lengths):
            out[j, :, :n] = F.scaled_dot_product_attention(q[j : j + 1, :, :n], k[j : j + 1, :, :n],
                                                           v[j : j + 1, :, :n], scale=1.0)[0]
    return attn.out_proj(out.transpose(1, 2).reshape(batch, frames, dim))


def _layer_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)`` computed in ``x``'s dtype (float32) whatever the dtype of the norm's weights."""
    w = norm.weight.to(x.dtype) if norm.weight is not None else None
    b = norm.bias.to(x.dtype) if norm.bias is not None else None
    return F.layer_norm(x, norm.normalized_shape, w, b, norm.eps)


def _inference_block(layer: nn.Module, hidden: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
    """One ``WhisperEncoderLayer`` without autograd: the same operations as its ``forward`` (pre-norm attention,
    pre-norm GELU feed-forward, residuals), with a fused q/k/v projection and the feed-forward run over chunks of
    ``FFN_CHUNK_ROWS`` frames so that its wide intermediate stays in cache (together about 20% faster on a 2-core
    CPU; equal up to float rounding). Used by :meth:`WhisperSpeechEncoder._run_blocks` when no gradient is needed.

    Mixed precision as autocast does it, without casting the weights on every call: ``hidden`` (the residual
    stream, ``(batch, frames, d_model)``) and the layer norms stay in ``hidden``'s dtype (float32); the
    projections and attention run in the weights' dtype (bf16 after :meth:`Encoder.cast`) on inputs cast to it.
    With float32 weights every cast is a no-op.
    """
    compute = layer.fc1.weight.dtype
    attn = _inference_attention(layer.self_attn, _layer_norm(layer.self_attn_layer_norm, hidden).to(compute),
                                attn_mask)
    hidden = hidden + attn.to(hidden.dtype)
    flat = hidden.reshape(-1, hidden.shape[-1])
    out = torch.empty_like(flat)
    norm, fc1, fc2 = layer.final_layer_norm, layer.fc1, layer.fc2
    for s in range(0, flat.shape[0], FFN_CHUNK_ROWS):
        rows = flat[s : s + FFN_CHUNK_ROWS]
        h = layer.activation_fn(fc1(_layer_norm(norm, rows).to(compute)))
        torch.add(rows, fc2(h).to(rows.dtype), out=out[s : s + FFN_CHUNK_ROWS])
    out = out.view_as(hidden)
    if out.dtype == torch.float16:
        limit = torch.finfo(out.dtype).max - 1000
        out = torch.clamp(out, min=-limit, max=limit)
    return out


def whisper_mel_filters(n_mels: int, source: str | None = None) -> np.ndarray:
    """Mel filters ``(201, n_mels)`` from the model's preprocessor config (``source``) or Whisper's defaults."""
    from transformers import WhisperFeatureExtractor

    if source is not None:
        try:
            fe = WhisperFeatureExtractor.from_pretrained(source)
            if fe.feature_size == n_mels:
                return fe.mel_filters
        except OSError:
            pass
    return WhisperFeatureExtractor(feature_size=n_mels).mel_filters
