"""Recipe ``mll``: multi-loss learning with energy-adaptive mixup and a frame-level attention module.

Wang, Geng et al., "Multi-Loss Learning for Speech Emotion Recognition with Energy-Adaptive Mixup and Frame-Level
Attention", Interspeech 2025 (``/work/shared/papers/mll-eam-flam-interspeech2025.txt``).

* Mixup on raw waveforms before the encoder (config ``augment: {name: eam | lam | none, mode: ..., p, k, ...}``):
    - ``mode: on_the_fly`` (needs ``features.source: waveform``): the encoder runs in the training loop
      (:class:`~serkit.models.encoder_model.EncoderDownstream`); :meth:`MLLRecipe.batch_hook` mixes the batch's
      waveforms (partners from the same batch, i.e. training speakers only) and adds ``emotion_soft``;
    - ``mode: variants`` (cached features; the CPU mode): ``k`` pre-mixed variants per utterance, extracted once
      into a separate feature store (:mod:`serkit.augment.variants`), added to a fold's training items with their
      soft labels. Partners come from the parent's test group and variants whose partner is not a training item
      of the fold (validation speakers) are left out, so no test or validation audio is ever trained on.
    - ``mode: auto`` (default): ``on_the_fly`` with ``features.source: waveform``, else ``variants``.
* Model ``mll``: :mod:`serkit.models.mll`; the training set of real utterances + variants:
  :class:`serkit.data.soft_labels.SoftLabelTrainSet`.
* Objective (config ``objective:``): ``kl`` + ``focal`` + ``center`` (its own lr, 5e-3) + ``frame_supcon`` on the
  soft labels, weights chosen so that each weighted term lies in [0, 1].
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from serkit.config_defaults import AUGMENT_DEFAULTS
from serkit.data.soft_labels import SoftLabelTrainSet
from serkit.errors import ConfigError
from serkit.models.registry import ModelSpec
from serkit.recipes.base import NoOptions, Recipe, register_recipe

log = logging.getLogger("serkit")


# ------------------------------------------------------------------------------------------------------ helpers
def augment_options(cfg: dict) -> dict:
    """The config's ``augment:`` with defaults and ``mode`` resolved (``variants`` | ``on_the_fly``)."""
    aug = {**AUGMENT_DEFAULTS, **(cfg.get("augment") or {})}
    aug["name"] = str(aug["name"]).lower()
    mode = aug["mode"]
    source = cfg["features"]["source"]
    if mode == "auto":
        mode = "on_the_fly" if source == "waveform" else "variants"
    if mode not in ("variants", "on_the_fly"):
        raise ConfigError(f"augment.mode={mode!r}: choose variants, on_the_fly or auto")
    if aug["name"] != "none":
        if mode == "on_the_fly" and source != "waveform":
            raise ConfigError("augment.mode=on_the_fly mixes waveforms before the encoder: "
                              "set features.source: waveform")
        if mode == "variants" and source != "cache":
            raise ConfigError("augment.mode=variants uses pre-extracted features: set features.source: cache")
    aug["mode"] = mode
    return aug


#: the keys recipe_options once had, and where they went (the feature stage applies both)
MOVED_OPTIONS = {"frame_stride": "features.pool_frames", "prenormalize": "features.frame_norm: layer"}


def check_recipe_options(cfg: dict) -> None:
    """The mll recipe has no ``recipe_options`` (:class:`~serkit.recipes.base.NoOptions`); its old keys are refused
    with their new place named."""
    for key in cfg.get("recipe_options") or {}:
        if key in MOVED_OPTIONS:
            raise ConfigError(f"recipe_options.{key} moved to the feature stage: use {MOVED_OPTIONS[key]}")
    MLLRecipe().options(cfg)


_VARIANT_STORES: dict = {}


def variant_store(cfg: dict, manifest):
    """``(store, table)`` of the config's pre-mixed variants (extracted on first use; cached per process)."""
    from serkit.augment.variants import ensure_variant_store
    from serkit.protocols import make_folds
    from serkit.train.experiment import experiment_protocol
    from serkit.train.features import store_dir

    aug = augment_options(cfg)
    spec = {k: v for k, v in aug.items() if k not in ("mode", "p", "per_epoch", "preload")}
    spec.setdefault("k", 2)
    spec.setdefault("seed", int(cfg["train"]["seed"]))
    folds = make_folds(manifest, experiment_protocol(cfg, manifest), seed=int(cfg["train"]["seed"]))
    base = store_dir(cfg, manifest)
    key = (str(base), repr(sorted(spec.items())), tuple(sorted(map(str, manifest["id"]))))
    if key not in _VARIANT_STORES:
        _VARIANT_STORES[key] = ensure_variant_store(manifest, folds, spec, cfg["encoder"], base,
                                                    progress=bool(cfg["train"]["progress"]))
    return _VARIANT_STORES[key]


def _pad_waves(waves: list, device) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = [len(w) for w in waves]
    buf = torch.zeros(len(waves), max(lengths), dtype=torch.float32)
    for j, w in enumerate(waves):
        buf[j, : len(w)] = torch.as_tensor(np.asarray(w, dtype=np.float32))
    return buf.to(device), torch.tensor(lengths, dtype=torch.long, device=device)


# ------------------------------------------------------------------------------------------------------ recipe
@register_recipe("mll")
class MLLRecipe(Recipe):
    """MLL: waveform mixup (EAM/LAM) + the ``mll`` model + KL/focal/center/frame-SupCon on soft labels."""

    options_class = NoOptions

    def build_model(self, cfg: dict, spec: ModelSpec) -> nn.Module:
        check_recipe_options(cfg)
        opts = dict(cfg["model"])
        f = cfg["features"]
        if f.get("frame_norm") == "layer" and opts.get("name") == "mll" and f["source"] == "cache":
            opts["normalize"] = False  # the feature stage already layer-normalised every frame
        from serkit.models.catalog import build_model

        return build_model(spec, opts.pop("name"), **opts)

    def build_datasets(self, cfg: dict, manifest, fold, labels, source):
        """The stage's datasets; in ``variants`` mode the training set gains the fold's valid pre-mixed variants,
        read through the same feature stage (each variant normalised with its parent speaker's statistics)."""
        from serkit.train.datasets import as_feature_stage, build_datasets

        check_recipe_options(cfg)
        train, val, test = build_datasets(cfg, manifest, fold, labels, source)
        aug = augment_options(cfg)
        if source is None or aug["mode"] != "variants" or aug["name"] == "none":
            return train, val, test
        from serkit.augment.variants import soft_labels, valid_variants

        stage = as_feature_stage(cfg, manifest, fold, source)
        store, table = variant_store(cfg, manifest)
        ok = valid_variants(table, fold)
        vds = stage.dataset(ok["id"].tolist(), labels, True, store=store, manifest=ok,
                            preload=bool(aug.get("preload", cfg["features"]["preload"])))
        soft = soft_labels(ok, labels.classes)
        per_epoch = aug.get("per_epoch")
        log.info("fold %d: %d training utterances + %d %s variants (of %d planned for them)%s", fold.index,
                 len(train), len(ok), aug["name"], int(table["parent"].isin(set(fold.train)).sum()),
                 f", {per_epoch} per parent per epoch" if per_epoch else "")
        return (SoftLabelTrainSet(train, vds, soft, labels.num_outputs, parents=ok["parent"].tolist(),
                                  per_epoch=per_epoch, seed=int(cfg["train"]["seed"]) + fold.index), val, test)

    def batch_hook(self, cfg: dict, labels):
        aug = augment_options(cfg)
        if aug["mode"] != "on_the_fly" or aug["name"] == "none":
            return None
        from serkit.augment.variants import build_mixup

        mixup = build_mixup(aug["name"], **{k: v for k, v in aug.items() if k not in ("name", "mode")})
        num_classes = labels.num_outputs

        def hook(batch: dict, module=None) -> dict:
            if "waveform" not in batch:
                raise ConfigError("augment.mode=on_the_fly needs waveform batches (features.source: waveform)")
            waves, lengths = batch["waveform"], batch["lengths"]
            device = waves.device
            # torch's global RNG is reseeded per epoch by SERModule: resumable, reproducible draws
            rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,)).item()))
            items = [waves[j, : int(lengths[j])].detach().cpu().numpy() for j in range(len(lengths))]
            mixed, soft = mixup(items, batch["emotion"].cpu().numpy(), num_classes, rng)
            out = dict(batch)
            out["waveform"], out["lengths"] = _pad_waves(mixed, device)
            out["emotion_soft"] = torch.from_numpy(soft).to(device)
            return out

        return hook
