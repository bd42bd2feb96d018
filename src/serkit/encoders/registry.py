"""Encoder names: short aliases, Hugging Face hub ids or local folders -> a ready :class:`Encoder`.

Weights come through ``transformers`` from the hub cache (set ``HF_HUB_CACHE`` / ``HF_HUB_OFFLINE=1`` to work
offline) or from a local folder. Tests and experiments without weights pass ``config=`` (e.g. a tiny
``HubertConfig``) to get a randomly initialised model of that family.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from serkit.encoders.base import MODES, Encoder
from serkit.errors import ConfigError

#: Short names -> hub ids.
ALIASES: dict[str, str] = {
    "hubert-base": "facebook/hubert-base-ls960",
    "hubert-large": "facebook/hubert-large-ll60k",
    "wavlm-base": "microsoft/wavlm-base",
    "wavlm-base-plus": "microsoft/wavlm-base-plus",
    "wavlm-large": "microsoft/wavlm-large",
    "wav2vec2-base": "facebook/wav2vec2-base",
    "wav2vec2-large": "facebook/wav2vec2-large-lv60",
    "data2vec-base": "facebook/data2vec-audio-base",
    "data2vec-large": "facebook/data2vec-audio-large",
    "whisper-tiny": "openai/whisper-tiny",
    "whisper-tiny.en": "openai/whisper-tiny.en",
    "whisper-base": "openai/whisper-base",
    "whisper-base.en": "openai/whisper-base.en",
    "whisper-small": "openai/whisper-small",
    "whisper-medium": "openai/whisper-medium",
    "whisper-large-v3": "openai/whisper-large-v3",
}

FBANK_PREFIX = "fbank"


def resolve_encoder_id(name: str) -> str:
    """Alias -> hub id; hub ids, local folders and ``fbank[-N]`` pass through unchanged."""
    return ALIASES.get(name, name)


def list_encoders() -> dict[str, str]:
    """Known aliases and what they resolve to (``fbank-80`` included)."""
    return {**ALIASES, "fbank": "fbank-80", "fbank-80": "fbank-80"}


def snapshot_revision(source: str) -> str:
    """Commit hash of the hub snapshot ``source`` loads from, ``"local"`` for a folder."""
    if Path(source).is_dir():
        return "local"
    from transformers.utils import cached_file

    try:
        path = cached_file(source, "config.json")
    except OSError:
        return "unknown"
    parts = Path(path).parts
    if "snapshots" in parts:
        return parts[parts.index("snapshots") + 1]
    return "unknown"


def _parse_fbank(name: str) -> int | None:
    if name == FBANK_PREFIX:
        return 80
    if name.startswith(FBANK_PREFIX + "-"):
        try:
            return int(name.split("-", 1)[1])
        except ValueError:
            raise ConfigError(f"encoder {name!r}: expected fbank-<n_mels>, e.g. fbank-80") from None
    return None


def load_encoder(
    name: str,
    *,
    mode: str = "native",
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    config=None,
    revision: str | None = None,
    eval_mode: bool = True,
    level_db: float | None = None,
) -> Encoder:
    """Build an encoder by alias, hub id, local folder or ``fbank[-n_mels]``.

    Args:
        name: e.g. ``"whisper-base"``, ``"microsoft/wavlm-large"``, ``"/models/my-hubert"``, ``"fbank-80"``.
        mode: ``"native"`` (own length; default) or ``"padded"`` (Whisper's stock 30 s input).
        device, dtype: where to put the weights and in which dtype (default: as stored, fp32; see
            :meth:`~serkit.encoders.base.Encoder.cast`, which keeps signal front ends in fp32).
        config: a ``transformers`` config (HubertConfig, WavLMConfig, Wav2Vec2Config, Data2VecAudioConfig,
            WhisperConfig) to build a randomly initialised model instead of loading weights (``revision="random"``).
        revision: hub revision to load (branch, tag or commit); default: the cached ``main``.
        eval_mode: put the module in eval mode (dropout off); call ``.train()`` to fine-tune.
        level_db: scale every input to this active-speech level (dBFS) before encoding (:mod:`serkit.level`).

    Loading pretrained weights leaves torch's global RNG as it was (``transformers`` initialises the modules before
    the checkpoint overwrites them, drawing from it): a model built after ``seed_everything`` gets the same initial
    weights whether or not its encoder had to be loaded first, so a resumed run that loads the encoder at another
    point than the uninterrupted one (e.g. for a later stage) trains the same. A random ``config`` draws from it.
    """
    if mode not in MODES:
        raise ConfigError(f"encoder mode must be one of {MODES}, got {mode!r}")
    source = resolve_encoder_id(name)
    n_mels = _parse_fbank(source)
    if n_mels is not None:
        from serkit.encoders.fbank import FbankEncoder

        encoder: Encoder = FbankEncoder(n_mels, mode=mode)
    else:
        # pretrained: the weights come from the checkpoint, not from the RNG; a random config draws from it
        rng = torch.random.fork_rng(devices=[]) if config is None else contextlib.nullcontext()
        with rng:
            encoder = _load_hf(source, mode=mode, config=config, revision=revision)
    encoder = encoder.to(device)
    encoder.level_db = None if level_db is None else float(level_db)
    if dtype is not None:
        encoder = encoder.cast(dtype)
    return encoder.eval() if eval_mode else encoder.train()


def _load_hf(source: str, *, mode: str, config, revision: str | None) -> Encoder:
    import transformers
    from transformers import AutoConfig

    from serkit.encoders.hf import SSL_MODEL_TYPES, HFSpeechEncoder
    from serkit.encoders.whisper import WhisperSpeechEncoder, whisper_mel_filters

    kwargs = {} if revision is None else {"revision": revision}
    if config is None:
        if Path(source).is_dir() and not (Path(source) / "config.json").is_file():
            raise ConfigError(f"encoder {source!r}: the folder has no config.json; expected a transformers model "
                              f"folder (save_pretrained) or one of the aliases {sorted(ALIASES)}")
        try:
            config = AutoConfig.from_pretrained(source, **kwargs)
        except (OSError, ValueError) as exc:
            why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConfigError(
                f"encoder {source!r}: cannot load its config ({why}). Known aliases: {sorted(ALIASES)}; "
                f"offline, set HF_HUB_CACHE to a cache holding it and HF_HUB_OFFLINE=1"
            ) from None
        rev = "local" if Path(source).is_dir() else (revision or snapshot_revision(source))
        pretrained = True
    else:
        rev, pretrained = "random", False
    model_type = config.model_type
    with quiet_transformers_loading():  # the unused Whisper decoder / heads warn when absent
        if model_type == "whisper":
            cls = transformers.WhisperForAudioClassification  # encoder-only class; weights load without decoder
            model = cls.from_pretrained(source, config=config, **kwargs) if pretrained else cls(config)
            encoder = model.encoder
            mel = whisper_mel_filters(config.num_mel_bins, source if pretrained else None)
            return WhisperSpeechEncoder(
                encoder, mel, name=source if pretrained else f"random-{model_type}", revision=rev, mode=mode
            )
        if model_type in SSL_MODEL_TYPES:
            cls = transformers.AutoModel
            model = (
                cls.from_pretrained(source, config=config, **kwargs)
                if pretrained
                else cls.from_config(config)
            )
            do_normalize = _do_normalize(source if pretrained else None, config)
            return HFSpeechEncoder(
                model,
                name=source if pretrained else f"random-{model_type}",
                revision=rev,
                do_normalize=do_normalize,
                mode=mode,
            )
    raise ConfigError(
        f"encoder {source!r}: model_type {model_type!r} is not supported; expected whisper or one of {SSL_MODEL_TYPES}"
    )


@contextlib.contextmanager
def quiet_transformers_loading():
    """Within: transformers logs errors only and shows no "Loading weights" bar (the hub's download bars stay)."""
    import transformers

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    bars = _hide_loading_bar(transformers)
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)
        _hide_loading_bar(transformers, bars)


def _hide_loading_bar(transformers, restore: bool | None = None) -> bool | None:
    """Turn transformers' own progress bars (the "Loading weights" bar of every load) off, or back to ``restore``;
    returns the setting before. The hub's download bars are left alone."""
    hf_logging = transformers.utils.logging
    before = getattr(hf_logging, "_tqdm_active", None)
    if before is not None:
        hf_logging._tqdm_active = False if restore is None else restore
    return before


def _do_normalize(source: str | None, config) -> bool:
    """Whether the model expects zero-mean unit-variance input: its preprocessor config, else the HF convention
    (layer-norm CNN front ends were trained on normalised audio)."""
    if source is not None:
        from transformers import Wav2Vec2FeatureExtractor

        try:
            return bool(Wav2Vec2FeatureExtractor.from_pretrained(source).do_normalize)
        except OSError:
            pass
    return getattr(config, "feat_extract_norm", "layer") == "layer"

