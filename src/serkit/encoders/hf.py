"""Self-supervised speech models from ``transformers``: HuBERT, WavLM, wav2vec 2.0, data2vec-audio.

Input: raw 16 kHz waveform, normalised to zero mean and unit variance per utterance (over its real samples) when
the model's feature extractor does so. Output: ``num_hidden_layers + 1`` hidden states at 50 Hz (20 ms hop,
25 ms receptive field of the CNN front end). Frame counts come from the model's own
``_get_feat_extract_output_lengths``.

Models with a group-norm CNN front end (``feat_extract_norm == "group"``: hubert-base, wav2vec2-base) take no
attention mask, and zero padding changes their outputs; data2vec-audio's stack of positional convolutions
also carries padding into real frames. They report ``padding_invariant = False`` and the extraction runner
batches only equal-length items for them.
"""

from __future__ import annotations

import torch
from torch import nn

from serkit.constants import SAMPLE_RATE
from serkit.encoders.base import Encoder, EncoderOutput, check_time_mask, length_mask

#: ``config.model_type`` values handled here.
SSL_MODEL_TYPES = ("hubert", "wavlm", "wav2vec2", "data2vec-audio")


class HFSpeechEncoder(Encoder):
    """Wraps a ``transformers`` HuBERT / WavLM / wav2vec2 / data2vec-audio base model (no head).

    ``mask_time_indices`` (bool ``(batch, frames)``) is passed to the model, which replaces those frames with
    its learned ``masked_spec_embed`` (HuBERT-style span masking). The model's own random SpecAugment is
    switched off (``mask_time_prob = mask_feature_prob = 0``) so that masking is only what the caller asks for.
    """

    supports_time_mask = True

    def __init__(
        self, model: nn.Module, *, name: str, revision: str, do_normalize: bool, mode: str = "native"
    ):
        super().__init__()
        cfg = model.config
        if cfg.model_type not in SSL_MODEL_TYPES:
            raise ValueError(f"{name}: model_type {cfg.model_type!r} is not one of {SSL_MODEL_TYPES}")
        if mode not in ("native", "padded"):
            raise ValueError(f"mode must be 'native' or 'padded', got {mode!r}")
        self.model = model
        self.name, self.revision, self.mode = name, revision, mode
        self.do_normalize = bool(do_normalize)
        self.num_layers = cfg.num_hidden_layers + 1
        self.hidden_size = cfg.hidden_size
        self.hop_samples = int(torch.tensor(cfg.conv_stride).prod().item())
        self.frame_rate = SAMPLE_RATE / self.hop_samples
        self.uses_attention_mask = getattr(cfg, "feat_extract_norm", "layer") == "layer"
        # data2vec-audio's stacked positional convs carry padding into the real frames despite the mask
        self.padding_invariant = self.uses_attention_mask and cfg.model_type != "data2vec-audio"
        # keep masked_spec_embed (created when the probabilities were > 0) but never mask at random
        cfg.mask_time_prob = 0.0
        cfg.mask_feature_prob = 0.0

    def num_frames(self, lengths: torch.Tensor) -> torch.Tensor:
        return self.model._get_feat_extract_output_lengths(torch.as_tensor(lengths).long()).long()

    def forward(
        self,
        waves: torch.Tensor,
        lengths: torch.Tensor | None = None,
        mask_time_indices: torch.Tensor | None = None,
    ) -> EncoderOutput:
        lengths = self._lengths_or_full(waves, lengths)
        waves = self._at_level(waves, lengths)
        sample_mask = length_mask(lengths, waves.shape[1])
        x = waves.float() * sample_mask
        if self.do_normalize:  # Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm, on real samples only
            n = lengths[:, None].to(x.dtype)
            mean = x.sum(dim=1, keepdim=True) / n
            var = (((x - mean) ** 2) * sample_mask).sum(dim=1, keepdim=True) / n
            x = (x - mean) / torch.sqrt(var + 1e-7) * sample_mask
        param = next(self.model.parameters())
        x = x.to(param.dtype)
        attention_mask = sample_mask.long() if self.uses_attention_mask else None
        out = self.model(
            x,
            attention_mask=attention_mask,
            mask_time_indices=mask_time_indices,
            output_hidden_states=True,
            return_dict=True,
        )
        states = tuple(out.hidden_states)
        frame_mask = length_mask(self.num_frames(lengths).to(x.device), states[0].shape[1])
        return EncoderOutput(hidden_states=states, frame_mask=frame_mask, frame_rate=self.frame_rate)

    def forward_from(
        self,
        hidden_state: torch.Tensor,
        layer_index: int,
        frame_mask: torch.Tensor,
        mask_time_indices: torch.Tensor | None = None,
    ) -> EncoderOutput:
        """Transformer layers ``layer_index..`` on ``hidden_state`` (see :meth:`Encoder.forward_from`).

        ``0 <= layer_index < num_layers - 1``. Hidden states are what :meth:`forward` returns: with
        ``transformers`` >= 5 the raw layer outputs (the stable-layer-norm variants' final layer norm is not in
        them), with older versions the top one of those variants has it. The attention mask is built from
        ``frame_mask`` exactly when :meth:`forward` passes one (layer-norm front ends); WavLM's relative position
        bias is recomputed from its first layer. Masked frames become the model's ``masked_spec_embed`` (at this
        depth, not before the positional convolution as in :meth:`forward`).
        """
        model, enc = self.model, self.model.encoder
        layers = enc.layers
        final_norm = _is_stable(enc) and _TOP_STATE_NORMED
        if not 0 <= layer_index < len(layers):
            raise ValueError(f"{self.name}: layer_index must lie in 0..{len(layers) - 1}, got {layer_index}")
        param = next(model.parameters())
        hidden = hidden_state.to(param.dtype)
        frame_mask = frame_mask.bool().to(hidden.device)
        if frame_mask.shape != hidden.shape[:2]:
            raise ValueError(f"frame_mask must be (batch, frames)={tuple(hidden.shape[:2])}, "
                             f"got {tuple(frame_mask.shape)}")
        if mask_time_indices is not None:
            emb = getattr(model, "masked_spec_embed", None)
            if emb is None:
                raise ValueError(f"{self.name}: the model has no masked_spec_embed (mask_time_prob was 0 at creation)")
            check_time_mask(mask_time_indices, frame_mask)
            hidden = torch.where(mask_time_indices[..., None].to(hidden.device), emb.to(hidden.dtype), hidden)
        raw_mask = frame_mask.long() if self.uses_attention_mask else None
        wavlm = self.model.config.model_type == "wavlm"
        if wavlm:
            attn = raw_mask
        else:
            from transformers.masking_utils import create_bidirectional_mask

            attn = create_bidirectional_mask(config=enc.config, inputs_embeds=hidden, attention_mask=raw_mask)
        position_bias = None
        if wavlm and layer_index > 0:
            att0 = layers[0].attention
            t = hidden.shape[1]
            position_bias = att0.compute_bias(t, t)
            position_bias = position_bias.unsqueeze(0).repeat(hidden.shape[0], 1, 1, 1).view(
                hidden.shape[0] * att0.num_heads, t, t)
        states = [hidden]
        for i in range(layer_index, len(layers)):
            if self.training and enc.config.layerdrop > 0.0 and not (wavlm and i == 0) \
                    and torch.rand([]) < enc.config.layerdrop:
                states.append(hidden)
                continue
            if wavlm:
                hidden, position_bias = layers[i](hidden, attention_mask=attn, position_bias=position_bias, index=i)
            else:
                hidden = layers[i](hidden, attention_mask=attn)
            states.append(hidden)
        if final_norm:
            states[-1] = enc.layer_norm(hidden)
        return EncoderOutput(hidden_states=tuple(states), frame_mask=frame_mask, frame_rate=self.frame_rate)


def _transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


#: transformers < 5 returns the stable-layer-norm variants' top hidden state after the final layer norm.
_TOP_STATE_NORMED = _transformers_major() < 5


def _is_stable(encoder: nn.Module) -> bool:
    """Whether a ``transformers`` SSL encoder is a stable-layer-norm (pre-LN) variant: final layer norm on top."""
    return "StableLayerNorm" in type(encoder).__name__
