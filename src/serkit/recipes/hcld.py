"""HCLD recipe: Hybrid Contrastive Learning Decoupling (Li et al., ICASSP 2025) for SER + speaker verification.

Model ``hcld`` (config ``model: {name: hcld, ...}``)::

    cached encoder layers (batch, layers, T, D)
      -> [frame_pool: masked average pooling over time, optional]
      -> Featurizer (layer pick / learned weighted sum, optional per-layer LayerNorm)
      -> [crop/pad to max_frames (paper: 7.5 s = 374/375 frames at 50 Hz), optional]
      -> emotion extractor  -> X_e (batch, dim) -> linear emotion classifier   -> "logits"
      -> speaker extractor  -> X_s (batch, dim) -> linear speaker classifier   -> "speaker_logits"
         (cnn | lstm | transformer each, see serkit.models.extractors; the two may differ)

Out keys: ``logits``, ``speaker_logits`` (training speakers, ``ModelSpec.num_speakers``),
``emotion_features`` (X_e), ``speaker_features`` (X_s), ``embedding`` (= X_e), ``frame_mask``.
``speaker_extractor: none`` drops the speaker branch (the "emotion only" baseline of Table II).

Fixed length. The paper crops/pads the *waveform* to 7.5 s before HuBERT. The feature cache holds frames of the
whole utterance (50 Hz), so the crop happens on frames: ``max_frames: 375`` crops longer utterances (a random
window in training, the centre window in evaluation) and ``pad: mask`` (default) leaves shorter ones short with
their padding masked out of every extractor (the output does not depend on padding), while ``pad: zeros`` pads
every utterance to exactly ``max_frames`` zero frames that count as real (the paper's fixed-length input; padded
frames of a cached encoder are zeros, not the encoder's response to silence). The dataset-level alternative is
``train.max_frames`` (crops only, before collation, which also saves memory). ``frame_pool: k`` averages k frames
(masked) before everything else, a cheap way to make CPU runs tractable (50 Hz -> 50/k Hz); ``max_frames``
counts frames after pooling.

Recipe ``hcld`` (config ``recipe: hcld``):

- ``train_sampler``: :class:`serkit.data.pairs.PairBatchSampler` over the training fold's encoded emotion and
  speaker labels, so every batch holds ICLD positive pairs (same speaker, different emotion) and negative pairs
  (different speaker, same emotion). ``recipe_options: {pair_sampler: false}`` falls back to a plain shuffle;
  ``min_pos`` / ``min_neg`` (default 1 each).
- ``objective_context``: ``label_embeddings`` (text embeddings of ``labels.classes``, computed once per process
  and cached on disk by :func:`serkit.models.label_text.embed_label_texts`; model ``roberta-base`` as in the
  paper, or the ``text_model`` of the ``lcl`` term; offline it falls back to the packaged all-MiniLM-L6-v2) and
  ``feature_dim`` (``model.dim``) for the ``lcl`` term.
- ``extra_test_metrics``: the base recipe's ``speaker_eer`` (cosine scoring of X_s over all test-utterance pairs:
  under speaker-independent protocols the test speakers are unseen, so the closed-set speaker head cannot be
  scored) and ``speaker_wa``/``speaker_ua`` of the speaker head only when the fold shares speakers (e.g.
  ``protocol: {name: random}``); plus ``emotion_feature_eer``, the same EER on X_e (higher = less speaker
  information left in the emotion features, a direct measure of decoupling).

The full HCLD objective, ``L = L_task + L_CLD + L_SCL + L_Label`` (all weights 1 in the paper)::

    objective:
      - {name: cross_entropy}                                  # L_emo
      - {name: hcld_speaker_ce}                                # L_spe (unknown / unseen speakers ignored)
      - {name: icld, margin: 0.5, hinge: text}                 # L_CLD (positives on X_e, negatives on X_s)
      - {name: supcon, feature_key: emotion_features}          # L_SCL
      - {name: lcl}                                            # L_Label (label_embeddings, feature_dim filled in)

ICLD hinge: the default ``hinge: text`` is ``max(0, cos - margin)^2`` on negative (different speaker, same
emotion) pairs of X_s, what the paper's text says ("similarity less than a preset threshold"); ``hinge: formula``
is the printed equation ``max(0, margin - cos)^2``. Margin 0.5 is ours (the paper gives none).

Speaker CE (``hcld_speaker_ce``): cross-entropy on ``speaker_logits`` over the training speakers, ignoring items
whose speaker is not a training speaker (label -1: the validation speakers of speaker-independent folds), and 0
when a batch has none (plain ``speaker_ce`` returns NaN there, which only pollutes ``val_loss``).

Table II baselines: see :mod:`serkit.recipes.hcld_ablation` (emotion only, orthogonality decoupling, HCLD,
without SupCon, without LCL).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from serkit.data.labels import LabelMap
from serkit.encoders.featurizer import Featurizer
from serkit.errors import ConfigError
from serkit.losses.base import register_loss
from serkit.losses.classification import CrossEntropy
from serkit.models.extractors import build_extractor
from serkit.models.registry import ModelSpec, register_model
from serkit.recipes.base import Recipe, register_recipe

PAD_MODES = ("mask", "zeros")


# -- frame-level helpers ------------------------------------------------------------------------------------------
def pool_frames(features: torch.Tensor, mask: torch.Tensor | None, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked average pooling over time by ``k``: ``features (B, L, T, D)`` (or ``(B, T, D)``), ``mask (B, T)``
    -> ``(B, L, ceil(T/k), D)``, ``mask (B, ceil(T/k))`` (a pooled frame is real when any of its frames is)."""
    squeeze = features.dim() == 3
    x = features.unsqueeze(1) if squeeze else features
    b, _, t, _ = x.shape
    if mask is None:
        mask = torch.ones(b, t, dtype=torch.bool, device=x.device)
    pad = (-t) % k
    m = mask.to(x.dtype)
    if pad:
        x = F.pad(x, (0, 0, 0, pad))
        m = F.pad(m, (0, pad))
    tt = x.shape[2] // k
    x = x * m[:, None, :, None]
    xs = x.reshape(b, x.shape[1], tt, k, x.shape[-1]).sum(3)
    ms = m.reshape(b, tt, k).sum(2)
    xs = xs / ms.clamp_min(1.0)[:, None, :, None]
    out_mask = ms > 0
    return (xs.squeeze(1) if squeeze else xs), out_mask


def crop_pad_frames(x: torch.Tensor, mask: torch.Tensor | None, max_frames: int | None, pad: str = "mask",
                    train: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop ``x (B, T, D)`` to at most ``max_frames`` real frames per row (random window when ``train``, else the
    centre) and, with ``pad="zeros"``, pad every row to exactly ``max_frames`` zero frames marked real.
    Returns ``(x (B, T', D), mask (B, T'))``; ``max_frames=None`` returns the input (mask filled in)."""
    b, t, _ = x.shape
    if mask is None:
        mask = torch.ones(b, t, dtype=torch.bool, device=x.device)
    mask = mask.bool()
    if not max_frames:
        return x, mask
    n = int(max_frames)
    lengths = mask.sum(1)
    if t > n:
        over = (lengths - n).clamp_min(0)
        if train:
            starts = (torch.rand(b, device=x.device) * (over + 1).to(torch.float32)).floor().long()
            starts = torch.minimum(starts, over)
        else:
            starts = over // 2
        idx = (starts[:, None] + torch.arange(n, device=x.device)[None, :]).clamp_max(t - 1)
        x = torch.gather(x, 1, idx[:, :, None].expand(-1, -1, x.shape[-1]))
        mask = torch.gather(mask, 1, idx) & (torch.arange(n, device=x.device)[None, :] < lengths[:, None])
        t = n
    if pad == "zeros":
        x = x.masked_fill(~mask[:, :, None], 0.0)
        if t < n:
            x = F.pad(x, (0, 0, 0, n - t))
        mask = torch.ones(b, n, dtype=torch.bool, device=x.device)
    return x, mask


# -- model -------------------------------------------------------------------------------------------------------
@register_model("hcld")
class HCLDModel(nn.Module):
    """HCLD two-branch model; see the module docstring. Options (config ``model:``):

    ``emotion_extractor`` (cnn | lstm | transformer, default cnn), ``speaker_extractor`` (same choices, default:
    the emotion one; ``none`` = no speaker branch), ``dim`` (size of X_e and X_s, default 256), ``layers``
    (featurizer spec, default ``weighted``), ``normalize`` (LayerNorm each layer, default true), ``extractor_opts``
    (``{arch: {option: value}}`` applied to any branch of that architecture, e.g. ``{cnn: {channels: [128]}}``),
    ``emotion_opts`` / ``speaker_opts`` (per-branch options, applied last), ``dropout`` (before the classifiers),
    ``max_frames`` (crop, e.g. 375 = 7.5 s at 50 Hz), ``pad`` (mask | zeros), ``frame_pool`` (time pooling
    factor, default 1).
    """

    def __init__(self, spec: ModelSpec, emotion_extractor: str = "cnn", speaker_extractor: str | None = None,
                 dim: int = 256, layers="weighted", normalize: bool = True, extractor_opts: dict | None = None,
                 emotion_opts: dict | None = None, speaker_opts: dict | None = None, dropout: float = 0.1,
                 max_frames: int | None = None, pad: str = "mask", frame_pool: int = 1):
        super().__init__()
        if spec.task != "classification":
            raise ConfigError("model hcld: classification only (emotion classes + speaker classes)")
        if pad not in PAD_MODES:
            raise ConfigError(f"model hcld: pad must be one of {PAD_MODES}, got {pad!r}")
        if int(frame_pool) < 1:
            raise ConfigError(f"model hcld: frame_pool must be >= 1, got {frame_pool}")
        speaker_extractor = emotion_extractor if speaker_extractor is None else speaker_extractor
        self.featurizer = Featurizer(spec.num_layers, spec.hidden_size, layers, normalize=normalize)
        d_in = self.featurizer.output_size
        self.max_frames, self.pad, self.frame_pool = max_frames, pad, int(frame_pool)
        per_arch = dict(extractor_opts or {})

        def opts(arch: str, own: dict | None) -> dict:
            return {**dict(per_arch.get(arch, {})), **dict(own or {})}

        self.emotion_arch, self.speaker_arch = emotion_extractor, speaker_extractor
        self.emotion_extractor = build_extractor(emotion_extractor, d_in, dim, **opts(emotion_extractor, emotion_opts))
        self.drop = nn.Dropout(dropout)
        self.emotion_classifier = nn.Linear(dim, spec.num_outputs)
        self.speaker_extractor = self.speaker_classifier = None
        if speaker_extractor not in (None, "none", False):
            self.speaker_extractor = build_extractor(speaker_extractor, d_in, dim,
                                                     **opts(speaker_extractor, speaker_opts))
            if spec.num_speakers:
                self.speaker_classifier = nn.Linear(dim, spec.num_speakers)

    def frames(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder layers -> (pooled) featurized, cropped/padded frames ``(B, T', d)`` and mask ``(B, T')``."""
        feats, mask = batch["features"], batch.get("frame_mask")
        if self.frame_pool > 1:
            feats, mask = pool_frames(feats, mask, self.frame_pool)
        x = self.featurizer(feats)
        return crop_pad_frames(x, mask, self.max_frames, self.pad, train=self.training)

    def forward(self, batch: dict) -> dict:
        x, mask = self.frames(batch)
        xe = self.emotion_extractor(x, mask)
        out = {"emotion_features": xe, "embedding": xe, "logits": self.emotion_classifier(self.drop(xe)),
               "frame_mask": mask}
        if self.speaker_extractor is not None:
            xs = self.speaker_extractor(x, mask)
            out["speaker_features"] = xs
            if self.speaker_classifier is not None:
                out["speaker_logits"] = self.speaker_classifier(self.drop(xs))
        return out


# -- losses ------------------------------------------------------------------------------------------------------
@register_loss("hcld_speaker_ce")
class KnownSpeakerCE(CrossEntropy):
    """Speaker CE on ``speaker_logits`` over training speakers; items with speaker ``< 0`` are ignored and a batch
    without any known speaker gives 0 (with grad) instead of NaN."""

    def __init__(self, **kw):
        super().__init__(logits_key="speaker_logits", target_key="speaker", **kw)

    def forward(self, out: dict, batch: dict) -> torch.Tensor:
        logits = out[self.logits_key]
        y = batch[self.target_key].long()
        if not bool((y >= 0).any()):
            return logits.sum() * 0.0
        return super().forward(out, batch)


# -- recipe ------------------------------------------------------------------------------------------------------
_TEXT_CACHE: dict[tuple, torch.Tensor] = {}


def label_text_embeddings(classes: list[str], text_model: str = "roberta-base", cache_dir=None) -> torch.Tensor:
    """``(C, text_dim)`` embeddings of the class names, computed once per process (and cached on disk)."""
    key = (tuple(classes), text_model, str(cache_dir))
    if key not in _TEXT_CACHE:
        from serkit.models.label_text import embed_label_texts

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


@register_recipe("hcld")
class HCLDRecipe(Recipe):
    """The HCLD recipe (module docstring). ``recipe_options``: ``pair_sampler`` (default true), ``min_pos``,
    ``min_neg`` (pairs guaranteed per batch, default 1 each), ``text_model`` (default ``roberta-base``; an ``lcl``
    term's own ``text_model`` wins), ``label_text`` (class -> word mapping), ``text_cache_dir``."""

    def objective_context(self, cfg: dict, labels: LabelMap, train_enc: dict, spec: ModelSpec) -> dict:
        ctx = super().objective_context(cfg, labels, train_enc, spec)
        lcl_terms = [t for t in cfg["objective"] if t.get("name") == "lcl" and "label_embeddings" not in t]
        if lcl_terms:
            ro = cfg.get("recipe_options") or {}
            text_model = lcl_terms[0].get("text_model", ro.get("text_model", "roberta-base"))
            words = label_words(list(labels.classes), ro.get("label_text"))
            ctx["label_embeddings"] = label_text_embeddings(words, text_model, ro.get("text_cache_dir"))
        ctx["feature_dim"] = int(cfg["model"].get("dim", 256))
        return ctx

    def train_sampler(self, cfg: dict, dataset, seed: int):
        ro = cfg.get("recipe_options") or {}
        if not ro.get("pair_sampler", True):
            return super().train_sampler(cfg, dataset, seed)
        import warnings

        from serkit.data.pairs import PairBatchSampler

        bs = int(cfg["train"]["batch_size"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "no pair of a kind" on degenerate data: the guarantee is dropped
            sampler = PairBatchSampler(dataset.enc["emotion"], dataset.enc["speaker"], batch_size=bs,
                                       min_pos=int(ro.get("min_pos", 1)), min_neg=int(ro.get("min_neg", 1)),
                                       seed=seed, drop_last=len(dataset) > bs)
        return ("batch_sampler", sampler)

    def extra_test_metrics(self, outputs: dict, rows, labels: LabelMap, fold) -> dict:
        out = super().extra_test_metrics(outputs, rows, labels, fold)
        if "emotion_features" in outputs:
            from serkit.verification import speaker_eer

            spk = rows["speaker"].astype(str).to_numpy()
            try:
                e = speaker_eer(outputs["emotion_features"], spk)
                out["emotion_feature_eer"] = float(e[0] if isinstance(e, tuple) else e)
            except ValueError:  # a single test speaker (or one utterance each): no target/non-target trials
                pass
        return out
