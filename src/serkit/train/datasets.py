"""A fold's datasets and model spec from the feature stage: what the model is given and what it is told."""

from __future__ import annotations

import logging

import pandas as pd

from serkit.data.labels import LabelMap
from serkit.models.registry import ModelSpec
from serkit.protocols import Fold
from serkit.train.logs import _best_epoch, _best_val, _keep_old_metrics, read_fold_metrics  # noqa: F401

log = logging.getLogger("serkit")


def build_datasets(cfg: dict, manifest: pd.DataFrame, fold: Fold, labels: LabelMap, source):
    """The fold's ``(train, val, test)`` datasets with the feature stage applied.

    ``source``: a :class:`~serkit.train.feature_stage.FeatureStage` (what the runner passes), a feature store, or
    None (waveforms, no cache)."""
    from serkit.data.features import WaveformDataset

    f = cfg["features"]
    features = as_feature_stage(cfg, manifest, fold, source)
    if f["source"] == "waveform" or features.store is None:
        from serkit.audio import CropPad

        crop = CropPad(**f["crop"]) if isinstance(f["crop"], dict) else None
        mk = lambda ids, train: features.with_speaker_stats(WaveformDataset(manifest, ids, labels, crop=crop,
                                                                            train=train))
        return mk(fold.train, True), mk(fold.val, False), mk(fold.test, False)
    train, val, test = features.datasets(fold, labels)
    if f.get("speed_perturb"):
        train = with_speed_variants(cfg, manifest, fold, labels, features, train)
    return train, val, test


_SPEED_STORES: dict = {}


def with_speed_variants(cfg: dict, manifest: pd.DataFrame, fold: Fold, labels: LabelMap, features, train, **read):
    """``train`` followed by the speed-perturbed copies (``features.speed_perturb``) of the fold's training
    utterances, read through the same feature stage (layers, each copy under its parent's speaker statistics,
    frame normalisation, pooling) and ``read``, the keywords ``train`` was read with
    (:meth:`~serkit.train.feature_stage.FeatureStage.dataset`: e.g. ``level``, ``layers``). The copies are
    extracted once per corpus and factor set, then reused."""
    from serkit.augment.speed import ensure_speed_store, fold_speed_variants
    from serkit.data.extended import ExtendedTrainSet
    from serkit.train.features import StoreUnion, store_dir

    factors = cfg["features"]["speed_perturb"]
    corpora = [manifest] if "corpus" not in manifest.columns else \
        [m.reset_index(drop=True) for _, m in manifest.groupby("corpus", sort=True)]
    parts = {}
    for m in corpora:  # one store of copies per corpus, beside the corpus's feature store
        base = store_dir(cfg, m)
        key = (str(base), tuple(factors), tuple(sorted(map(str, m["id"]))))
        if key not in _SPEED_STORES:
            _SPEED_STORES[key] = ensure_speed_store(m, factors, cfg["encoder"], base,
                                                    progress=bool(cfg["train"]["progress"]), log=log.info)
        parts[str(base)] = _SPEED_STORES[key]
    if len(parts) == 1:
        store, table = next(iter(parts.values()))
    else:
        store = StoreUnion({name: st for name, (st, _) in parts.items()})
        table = pd.concat([t for _, t in parts.values()], ignore_index=True)
    rows = fold_speed_variants(table, fold.train)
    extra = features.dataset(rows["id"].tolist(), labels, True, store=store, manifest=rows, **read)
    log.info("fold %d: %d training utterances + %d speed-perturbed copies (factors %s)", fold.index, len(train),
             len(rows), factors)
    return ExtendedTrainSet(train, extra)


def as_feature_stage(cfg: dict, manifest: pd.DataFrame, fold: Fold, source):
    """``source`` as a :class:`~serkit.train.feature_stage.FeatureStage` (built over the fold when it is a store)."""
    from serkit.train.feature_stage import FeatureStage

    f = cfg["features"]
    if isinstance(source, FeatureStage):
        if source.mode == f["normalize"] and source.layer_spec == f.get("layers"):
            return source
        source = source.store  # a selection candidate with another normalisation: its own stage
    return FeatureStage(f, source, manifest, fold.train + fold.val + fold.test, reference_ids=fold.train)


def speaker_normalizer(cfg: dict, manifest: pd.DataFrame, fold: Fold, source):
    """The fold's :class:`~serkit.data.normalize.SpeakerNormalizer` when the config asks for one
    (``features.normalize: speaker``), else None: the feature stage's (``source`` a FeatureStage) or a new one over
    the fold's speakers. Features only: each speaker's statistics use that speaker's own utterances (a test
    speaker's come from its test utterances, never from a label)."""
    if cfg["features"]["normalize"] == "none":
        return None
    return as_feature_stage(cfg, manifest, fold, source).normalizer


def load_loop_encoder(cfg: dict):
    """The encoder that runs inside the model when ``features.source: waveform``; returns (encoder, layers)."""
    from serkit.encoders import load_encoder, parse_layers

    enc = cfg["encoder"]
    encoder = load_encoder(enc["id"], mode=enc["mode"], eval_mode=True, revision=enc.get("revision"),
                           level_db=enc.get("level_db"))
    layers, _ = parse_layers(enc["layers"], encoder.num_layers)
    chosen = cfg["features"].get("layers")
    if chosen is not None:
        idx, _ = parse_layers(chosen, len(layers))
        layers = [layers[i] for i in idx]
    return encoder, layers


def model_spec(cfg: dict, labels: LabelMap, source, encoder=None, layers=None, extra: dict | None = None) -> ModelSpec:
    """What the model is told: task, outputs, the layers / width the feature stage hands it, speakers, classes."""
    from serkit.train.feature_stage import FeatureStage

    if isinstance(source, FeatureStage) and source.store is not None and encoder is None:
        num_layers, hidden, mix = source.num_layers, source.hidden_size, source.model_layers
    elif source is not None and not isinstance(source, FeatureStage):
        num_layers, hidden, mix = len(source.layers), int(source.hidden_size), None
    else:
        num_layers, hidden = len(layers or []), int(getattr(encoder, "hidden_size", 0))
        mix = source.model_layers if isinstance(source, FeatureStage) else None
    return ModelSpec(task=cfg["task"], num_outputs=labels.num_outputs, num_layers=num_layers, hidden_size=hidden,
                     num_speakers=len(labels.speakers), class_names=list(labels.classes),
                     extra={"encoder": cfg["encoder"], **(extra or {})}, layers=mix)
