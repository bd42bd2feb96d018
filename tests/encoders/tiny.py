"""Tiny randomly initialised configs of every encoder family (no weights needed)."""

from __future__ import annotations

import torch
from transformers import Data2VecAudioConfig, HubertConfig, Wav2Vec2Config, WavLMConfig, WhisperConfig

SSL_COMMON = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "conv_dim": (16, 16, 16, 16, 16, 16, 16),
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 2,
    "hidden_dropout": 0.0,
    "attention_dropout": 0.0,
    "activation_dropout": 0.0,
    "feat_proj_dropout": 0.0,
    "layerdrop": 0.0,
}


def tiny_config(family: str):
    """A tiny config of ``family``: hubert (group norm), hubert-layer, wavlm, wav2vec2, data2vec, whisper."""
    if family == "hubert":
        return HubertConfig(**SSL_COMMON, feat_extract_norm="group")
    if family == "hubert-layer":
        return HubertConfig(**SSL_COMMON, feat_extract_norm="layer", do_stable_layer_norm=True)
    if family == "wavlm":
        return WavLMConfig(**SSL_COMMON, feat_extract_norm="layer", num_buckets=16, max_bucket_distance=64)
    if family == "wav2vec2":
        return Wav2Vec2Config(**SSL_COMMON, feat_extract_norm="layer", do_stable_layer_norm=True)
    if family == "data2vec":
        return Data2VecAudioConfig(**{**SSL_COMMON, "num_conv_pos_embeddings": 5})
    if family == "whisper":
        return WhisperConfig(
            d_model=32,
            encoder_layers=2,
            encoder_attention_heads=2,
            encoder_ffn_dim=64,
            decoder_layers=1,
            decoder_attention_heads=2,
            decoder_ffn_dim=64,
            num_mel_bins=80,
            max_source_positions=1500,
            dropout=0.0,
        )
    raise ValueError(family)


FAMILIES = ("hubert", "hubert-layer", "wavlm", "wav2vec2", "data2vec", "whisper")


def tiny_encoder(family: str, mode: str = "native", seed: int = 0):
    from serkit.encoders import load_encoder

    torch.manual_seed(seed)
    return load_encoder(f"tiny-{family}", config=tiny_config(family), mode=mode)


def tiny_encoder_dir(family: str, path, seed: int = 0) -> str:
    """A tiny randomly initialised ``family`` encoder saved as a local model folder (usable as ``encoder.id``)."""
    import transformers

    torch.manual_seed(seed)
    cfg = tiny_config(family)
    model = transformers.WhisperForAudioClassification(cfg) if family == "whisper" else \
        transformers.AutoModel.from_config(cfg)
    model.save_pretrained(str(path))
    return str(path)
