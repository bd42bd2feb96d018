"""The feature stage: what every model sees of an encoder's hidden states, owned by the runner.

``features: {layers, normalize, frame_norm, pool_frames, max_frames, level}`` is applied here, before any model
sees a feature (as s3prl's runner owns its featurizer), for pooled statistics, for frames, and for models that run
encoder blocks in the loop (they get the speaker statistics with each batch and normalise the encoder's outputs,
:func:`serkit.data.normalize.normalize_hidden`):

* ``layers``: which stored hidden states the model gets: an index (``-1``), a list (``"0,2,4"``, ``[0, 2]``),
  ``all``, or ``weighted`` (every layer, and the model learns a softmax-weighted sum; ``weighted:0,2,4`` a subset).
  ``null`` (default): every stored layer, the model's own default decides how to combine them.
* ``normalize: speaker``: each speaker's features z-scored with that speaker's own statistics
  (:class:`~serkit.data.normalize.SpeakerNormalizer`; features only, no labels).
* ``frame_norm: layer``: every frame of every chosen layer layer-normalised (zero mean, unit variance over the
  feature dimension, no parameters), after the speaker normalisation and before the pooling (MLL's featurizer,
  done once on reading instead of at every step).
* ``pool_frames: k``: frames averaged over non-overlapping windows of k (50 Hz -> 50/k Hz).
* ``max_frames: n``: training items cropped to a random window of n frames (evaluation: the centre window).

:meth:`FeatureStage.record` says what was applied (the normaliser's own count of normalised utterances), and that
record, not the config, is what results.json reports.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from serkit.config_defaults import DEFAULTS
from serkit.data.features import ItemsWithExtras
from serkit.data.labels import LabelMap
from serkit.errors import ConfigError

#: results.json's ``feature_normalisation`` text per applied mode
NORMALISATION_TEXT = {
    "none": "none",
    "speaker": "speaker: each speaker's frames z-scored with that speaker's own feature statistics (no labels; "
               "test speakers' statistics from their test utterances, i.e. transductive; speakers with too little "
               "speech get the training fold's global statistics, listed per fold)",
    "auto": "auto: per fold, speaker normalisation (transductive, as 'speaker') or none, whichever scored higher "
            "on the validation speakers (folds[k].normalisation says which)",
}


class FeatureStage:
    """The feature stage of one fold over one feature store (one view).

    Args:
        options: the config's ``features:`` section (a view may override ``layers`` / ``level``).
        store: a :class:`~serkit.features.store.FeatureStore` (its pooled statistics give the speaker statistics), or
            None when there is no cache (waveforms, no normalisation).
        manifest, ids: the fold's rows; speaker statistics use every utterance of ``ids`` (train + val + test).
        reference_ids: the training fold's ids, whose global statistics replace a speaker's own when it has less
            than ``features.speaker_min_seconds`` / ``speaker_min_utterances`` of speech.
    """

    def __init__(self, options: dict, store, manifest: pd.DataFrame, ids: Sequence[str] | None = None,
                 name: str = "main", reference_ids: Sequence[str] | None = None):
        # the config's features section, each key the config leaves out at its one default (serkit.config_defaults)
        self.options = {**DEFAULTS["features"], **options}
        self.store, self.manifest, self.name = store, manifest, name
        self.level = self.options["level"]
        self.pool = int(self.options["pool_frames"] or 1)
        self.frame_norm = self.options["frame_norm"] or "none"
        self.max_frames = self.options["max_frames"]
        self.mode = self.options["normalize"] or "none"
        self.normalizer = None
        if self.mode == "speaker":  # ("auto" is resolved per selection candidate, each with its own stage)
            if store is None:
                raise ConfigError(f"features.normalize: {self.mode!r} needs the speakers' feature statistics from "
                                  f"a feature store; none was given for view {name!r}")
            from serkit.data.normalize import SpeakerNormalizer

            # a speaker with too little speech gets the reference (training fold's) global statistics
            self.normalizer = SpeakerNormalizer.from_store(
                store, manifest, ids, min_seconds=float(self.options["speaker_min_seconds"] or 0.0),
                min_utterances=int(self.options["speaker_min_utterances"] or 1), reference_ids=reference_ids)
        spec = self.options["layers"]
        self.layer_spec = spec
        self.indices: list[int] | None = None
        self.weighted = False
        if spec is not None and store is not None:
            from serkit.encoders.featurizer import parse_layers

            idx, self.weighted = parse_layers(spec, len(store.layers))
            self.indices = None if idx == list(range(len(store.layers))) else idx

    #: store methods a recipe written against the store (before the feature stage) may call on the stage
    STORE_API = ("load", "pooled", "entry", "root", "spec", "layers", "ids", "pooled_matrix", "frame_rate", "mode")

    def __getattr__(self, name: str):
        store = self.__dict__.get("store")
        if name in FeatureStage.STORE_API and store is not None:
            return getattr(store, name)
        raise AttributeError(f"FeatureStage has no attribute {name!r}")

    # -- what models are told ------------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        """Hidden states per item after layer choice."""
        if self.store is None:
            return 0
        return len(self.indices) if self.indices is not None else len(self.store.layers)

    @property
    def hidden_size(self) -> int:
        return int(self.store.hidden_size) if self.store is not None else 0

    @property
    def model_layers(self) -> str | None:
        """The featurizer spec a model applies over the layers it is given: ``"weighted"``, ``"all"`` (concatenate
        the chosen ones; one layer is that layer) or None (the config chose nothing: the model's default)."""
        if self.layer_spec is None:
            return None
        return "weighted" if self.weighted else "all"

    def stored_index(self, layer: int) -> int:
        """Position in the store of the encoder's hidden state ``layer`` (negative counts from the top)."""
        n = int(self.store.spec.get("num_layers") or len(self.store.layers))
        layer = int(layer) % n
        if layer not in self.store.layers:
            raise ConfigError(f"hidden state {layer} is not in the feature cache {self.store.root} (layers "
                              f"{self.store.layers}); extract it (encoder.layers: all)")
        return self.store.layers.index(layer)

    # -- datasets -------------------------------------------------------------------------------------------------
    def dataset(self, ids: Sequence[str], labels: LabelMap, train: bool, *, level: str | None = None,
                layers: list[int] | None = None, speaker_stats: bool = False, preload: bool | None = None,
                max_frames: int | None | str = "stage", store=None, manifest: pd.DataFrame | None = None):
        """A :class:`~serkit.data.features.FeatureDataset` of ``ids`` with this stage applied.

        ``layers`` (store positions) replaces the configured choice (e.g. every layer for a model that runs encoder
        blocks); ``speaker_stats`` serves the statistics with each item instead of normalising on reading (for
        such models: they normalise the encoder's outputs). ``store`` / ``manifest``: another store of the same
        encoder and its rows (e.g. MLL's pre-mixed variants, each under its parent's speaker), read through this
        stage: the same layers, speaker statistics, frame normalisation and pooling."""
        from serkit.data.features import FeatureDataset

        return FeatureDataset(
            self.store if store is None else store, self.manifest if manifest is None else manifest, ids, labels,
            level=level or self.level, frame_norm=self.frame_norm,
            preload=self.options["preload"] if preload is None else preload,
            max_frames=self.max_frames if max_frames == "stage" else max_frames, train=train,
            layers=self.indices if layers is None else layers, normalizer=self.normalizer, pool_frames=self.pool,
            speaker_stats=speaker_stats)

    def with_speaker_stats(self, dataset):
        """``dataset`` (e.g. waveforms for an encoder in the loop) whose items carry ``speaker_mean`` /
        ``speaker_std`` when this stage normalises; the model normalises the encoder's outputs with them."""
        return dataset if self.normalizer is None else SpeakerStatsItems(dataset, self.normalizer)

    def datasets(self, fold, labels: LabelMap, **kw) -> tuple:
        """``(train, val, test)`` datasets of ``fold``."""
        return (self.dataset(fold.train, labels, True, **kw), self.dataset(fold.val, labels, False, **kw),
                self.dataset(fold.test, labels, False, **kw))

    # -- what was applied -----------------------------------------------------------------------------------------
    @property
    def normalised(self) -> int:
        """Utterances whose features (or statistics) the normaliser served so far, plus the datasets built to
        normalise with it (a recipe's process-level cache of normalised frames may serve them without a new call)."""
        return 0 if self.normalizer is None else int(self.normalizer.applied) + int(self.normalizer.datasets)

    def record(self) -> dict:
        """What this stage applied: ``normalize`` is ``speaker`` only when the normaliser really served items."""
        return {"view": self.name, "normalize": self.mode if self.normalised else "none",
                "normalised_items": self.normalised, "layers": self.layer_spec, "frame_norm": self.frame_norm,
                "pool_frames": self.pool, "max_frames": self.max_frames, "level": self.level,
                **({"speed_perturb": list(self.options["speed_perturb"])}
                   if self.options.get("speed_perturb") else {})}


class SpeakerStatsItems(ItemsWithExtras):
    """A dataset whose items also carry their speaker's statistics ``speaker_mean`` / ``speaker_std``
    ``(layers, dim)`` (:func:`serkit.data.normalize.normalize_hidden` applies them to encoder outputs)."""

    def __init__(self, base, normalizer):
        super().__init__(base)
        self.normalizer = normalizer

    def extras(self, i: int, item: dict) -> dict:
        mean, std = self.normalizer.stats_for(self.rows["speaker"].iloc[i])
        return {"speaker_mean": mean, "speaker_std": std}


def applied_normalisation(records: list[dict]) -> str:
    """results.json's ``feature_normalisation`` from the folds' stage records (what every fold applied)."""
    modes = {r["normalize"] for r in records}
    if not modes:
        return "none"
    if len(modes) > 1:
        return "mixed: " + ", ".join(sorted(modes))
    return NORMALISATION_TEXT.get(modes.pop(), "none")
