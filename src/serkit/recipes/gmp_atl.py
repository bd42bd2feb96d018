"""GMP-ATL (Pan et al., Interspeech 2024) as a stage list: stage 1, clustering (GMPs), stage 2, stage 3.

The runner (:mod:`serkit.train.fit`) runs the stages in order and owns the feature stage, Trainer, loaders,
checkpoints, resumption, scoring and results; this module only declares the stages (hooks of
:class:`~serkit.recipes.base.Recipe`). The stage model is :class:`serkit.models.gmp_atl.GMPStageModel`: the head
reads every hidden state, speaker-normalised when ``features.normalize: speaker``, combined by ``features.layers``
(default ``weighted``, a learned weighted sum).

Stage 1 (multi-task, Sec. 3.1, Fig. 1a): encoder -> BiLSTM -> mean pooling -> linear projection (two linear
layers and a ReLU) -> emotion and gender heads; ``L = alpha CE(emotion) + (1 - alpha) CE(gender)``, alpha = 0.9
(``batch["gender"]``: 0 female, 1 male, -1 unknown and ignored); ``alpha: 1.0`` is plain cross-entropy (the
"method off" row). Its test scores are the "stage 1 only" row.

Stage heads (``stage1.head`` / ``stage3.head``): ``bilstm`` (the paper's, above) or ``stats``, the linear baseline's
family (``configs/<corpus>/baseline.yaml``, :class:`serkit.models.gmp_atl.StatsHead`): per hidden state the mean and
std over the real frames of the speaker-normalised states the stage model assembles (in stage 3 including the
fine-tuned top block's outputs), concatenated (``features.layers: all``) or combined by the learned layer weights
(``weighted``), batch-norm standardised (no affine), ``dropout``, an optional linear projection (``proj_dim``; 0 =
none, so emotion and gender logits are linear in the statistics), then the emotion and gender logits (stage 1) or the
AM-softmax classifier / plain CE (stage 3). ``stage1.class_weights: balanced`` weights the emotion CE by inverse class
frequency (as the baseline's objective). ``hidden`` is the BiLSTM's only.

GMPs (Sec. 3.1, step ``gmps``): frame features of hidden state ``cluster.layer`` (paper: -3) of the stage-1
encoder, of the TRAINING fold's utterances only (speaker-normalised like everything else), are clustered by k-means
at every scale of ``cluster.ks`` (paper: 64, 512, 4096; :mod:`serkit.clustering`, subsampled to
``max_points_per_centroid`` points per centre); every training frame gets one pseudo-label per scale. Emotion
labels, validation and test utterances are never looked at.

Stage 2 (retraining, Sec. 3.2, Fig. 1b): the encoder from stage 1 with HuBERT-style span masking of its input
frames (:func:`serkit.augment.masking.compute_span_mask`: p = 0.08, span 10) and one pseudo-label head per scale
on the top layer; CE on the masked frames (``pseudo_label_ce``; with ``masked_only``, the default, the heads run
on the masked real frames alone). A linear probe on the detached mean-pooled
features reports validation UA (it cannot change the encoder); the last epoch is kept, as the paper gives no
selection rule for this stage.

Stage 3 (fine-tuning, Sec. 3.3, Fig. 1c): the stage-2 encoder (stage-1 encoder without GMPs) with the stage-1
head structure and an AM-softmax classifier (s = 30, m = 0.2; ``loss: cross_entropy`` for the CE ablation);
``init_head: true`` starts the head (and layer weights) from stage 1's (same ``head`` and sizes); the checkpoint with
the best validation UA is scored on the test speakers.

Encoder placement per stage (``recipe_options.stageN.finetune``):

* ``features.source: waveform``: the encoder runs on waveforms inside the model; ``finetune`` is ``false``,
  ``true`` (the paper's full fine-tuning) or ``"top:K"``. Masking is the encoder's own (front-end output).
* ``features.source: cache`` (CPU mode): ``finetune: "top:K"`` runs only the top K blocks from the cached hidden
  state at their input (``Encoder.forward_from``), which equals ``top:K`` fine-tuning because the frozen lower
  blocks are deterministic in eval mode; ``false`` uses the cached layers (frozen encoder): with ``head: stats`` the
  cache's pooled statistics (mean + std per hidden state, speaker-normalised by the feature stage), which are what
  the head would compute from the frames. The cache must hold every hidden state (``encoder.layers: all``). Later
  stages may not train fewer top blocks than earlier ones. Stages 2 and 3 (``top:K``, stats head in stage 3) get
  each utterance's cached hidden state at the blocks' input as frames and every hidden state's pooled statistics
  for the frozen layers below it (:class:`WithPooledStats`), not the frames of every layer.

Speed-perturbed copies (``features.speed_perturb``, :mod:`serkit.augment.speed`): stages 1 and 3 train on the fold's
training utterances and their copies; the GMPs and stage 2 use the real training utterances only (a copy has another
frame count, and no pseudo-labels).

``train.refit: true`` refits the last stage on train + validation for the epoch count validation chose; earlier
stages keep their validation-chosen checkpoints.

``recipe_options`` (:class:`GMPOptions`)::

    stages: [1, 2, 3]            # [1]: stage 1 only; [1, 3]: without GMPs
    stage_root: null             # share stages between runs (ablation rows): <stage_root>/fold<k>/<stage>-<key>
    stage1: {finetune: false, head: bilstm, hidden: 256, proj_dim: 256, dropout: 0.3, alpha: 0.9, class_weights: null,
             train: {...overrides of train}}
    cluster: {layer: -3, ks: [64, 512, 4096], backend: auto, niter: 25, max_points_per_centroid: 256, seed: 0}
    stage2: {finetune: true, mask_prob: 0.08, span: 10, min_masks: 2, hidden: 256, masked_only: true, train: {}}
    stage3: {finetune: true, head: bilstm, loss: am_softmax, s: 30.0, m: 0.2, hidden: 256, proj_dim: 256, dropout: 0.3,
             init_head: false, train: {}}
"""

from __future__ import annotations

import copy
import itertools
import logging
from dataclasses import asdict

import numpy as np
import torch
from torch import nn

from serkit.data.features import ItemsWithExtras
from serkit.errors import ConfigError
from serkit.models.registry import ModelSpec
from serkit.recipes.base import Recipe, register_recipe
from serkit.recipes.gmp_atl_options import GMPOptions, stage_key

log = logging.getLogger("serkit")

def gmp_options(cfg: dict) -> GMPOptions:
    """``recipe_options`` as :class:`GMPOptions` (validated; unknown keys named)."""
    return GMPATLRecipe().options(cfg)


# -- data ----------------------------------------------------------------------------------------------------------
class PseudoLabelItems(ItemsWithExtras):
    """A stage dataset whose items also carry their frames' pseudo-labels ``pseudo`` (scales, T_max), -1 padded,
    cropped with the same window as the features (the feature stage's ``frame_offset``)."""

    def __init__(self, base, pseudo: list[np.ndarray]):
        super().__init__(base)
        self.pseudo = pseudo
        self.t_max = max((p.shape[1] for p in pseudo), default=1)

    def extras(self, i: int, item: dict) -> dict:
        lab = self.pseudo[i]
        if "features" in item:
            s = int(item.get("frame_offset", 0))
            lab = lab[:, s:s + item["features"].shape[1]]
        buf = np.full((lab.shape[0], self.t_max), -1, dtype=np.int64)
        buf[:, :lab.shape[1]] = lab
        return {"pseudo": buf}


def _with_copies(cfg: dict, manifest, fold, labels, stage, train, read: dict):
    """``train`` and, with ``features.speed_perturb``, the copies of its utterances read the same way (``read``)."""
    if not cfg["features"].get("speed_perturb"):
        return train
    from serkit.train.datasets import with_speed_variants

    return with_speed_variants(cfg, manifest, fold, labels, stage, train, **read)


class WithPooledStats(ItemsWithExtras):
    """A frames dataset whose items also carry ``pooled`` ``(layers, 2*dim)`` from a pooled-level dataset of the same
    utterances (the frozen layers' statistics, :meth:`GMPStageModel.layer_statistics`)."""

    def __init__(self, base, pooled):
        super().__init__(base)
        if list(pooled.ids) != list(base.ids):
            raise ValueError("WithPooledStats: the pooled dataset must hold the same utterances in the same order")
        self.pooled = pooled

    def extras(self, i: int, item: dict) -> dict:
        return {"pooled": self.pooled[i]["pooled"]}


# -- recipe --------------------------------------------------------------------------------------------------------
@register_recipe("gmp_atl")
class GMPATLRecipe(Recipe):
    """Declares GMP-ATL's stages (module docstring); the runner runs them."""

    options_class = GMPOptions

    def stage_root(self, cfg: dict) -> str | None:
        return self.options(cfg).stage_root

    # the encoder ---------------------------------------------------------------------------------------------
    def _encoder(self, cfg: dict):
        from serkit.encoders import load_encoder

        enc = cfg["encoder"]
        key = (enc["id"], enc["mode"], enc.get("revision"), enc.get("level_db"))
        if getattr(self, "_enc_key", None) != key:
            self._enc_proto = load_encoder(enc["id"], mode=enc["mode"], eval_mode=True,
                                           revision=enc.get("revision"), level_db=enc.get("level_db"))
            self._enc_key = key
        return copy.deepcopy(self._enc_proto)

    def _model(self, cfg: dict, stage: int, num_classes: int, finetune, o, ks=None) -> nn.Module:
        from serkit.models.gmp_atl import GMPStageModel
        from serkit.models.staged_encoder import StagedEncoder

        runner = StagedEncoder(self._encoder(cfg), cfg["features"]["source"], finetune)
        kw = {"hidden": o.hidden}
        if stage != 2:
            kw.update(head=o.head, dropout=o.dropout)
        if stage == 2:
            kw.update(ks=ks, mask_prob=o.mask_prob, span=o.span, min_masks=o.min_masks, masked_only=o.masked_only)
        else:
            kw["proj_dim"] = o.proj_dim
        if stage == 3:
            kw.update(loss=o.loss, s=o.s, m=o.m)
        layers = cfg["features"].get("layers")
        return GMPStageModel(runner, stage, num_classes, layers="weighted" if layers is None else layers, **kw)

    def build_model(self, cfg: dict, spec: ModelSpec) -> nn.Module:
        """The model of the last stage (stage 3, or stage 1 with ``stages: [1]``; stage 1 where ``train.final_stage:
        best_val`` kept it, ``spec.extra["final_stage"]``): what ``serkit train`` saves."""
        o = self.options(cfg)
        if 3 in o.stages and spec.extra.get("final_stage") in (None, "stage3"):
            return self._model(cfg, 3, spec.num_outputs, o.stage3.finetune, o.stage3)
        return self._model(cfg, 1, spec.num_outputs, o.stage1.finetune, o.stage1)

    # datasets --------------------------------------------------------------------------------------------------
    def build_datasets(self, cfg: dict, manifest, fold, labels, features) -> tuple:
        """Every stored hidden state, raw, with the speaker statistics attached (the model normalises the layers
        it assembles), or waveforms with the statistics."""
        if cfg["features"]["source"] == "waveform":
            return super().build_datasets(cfg, manifest, fold, labels, features)
        self._check_store(features)
        read = {"layers": list(range(len(features.store.layers))), "speaker_stats": True}
        train, val, test = features.datasets(fold, labels, **read)
        return _with_copies(cfg, manifest, fold, labels, features, train, read), val, test

    @staticmethod
    def _check_store(features) -> None:
        store = features.store
        n = int(store.spec.get("num_layers") or len(store.layers))
        if store.layers != list(range(n)):
            raise ConfigError(f"gmp_atl: the feature cache {store.root} holds layers {store.layers}; the stage models "
                              f"read every hidden state: cache encoder.layers: all")
        if features.pool > 1:
            raise ConfigError("gmp_atl: features.pool_frames must be 1 (the encoder blocks run on the cached frames)")

    # stages ----------------------------------------------------------------------------------------------------
    def stages(self, cfg: dict) -> list:
        from serkit.train.stages import Step, TrainStage

        if cfg["task"] != "classification":
            raise ConfigError("gmp_atl: classification only (emotion + gender heads, AM-softmax)")
        o = self.options(cfg)
        self._check_order(cfg, o)
        a = float(o.stage1.alpha)
        ce1 = {"name": "cross_entropy", "weight": a}
        if o.stage1.class_weights:
            ce1["class_weights"] = o.stage1.class_weights
        terms1 = [ce1] + ([{"name": "gender_ce", "weight": 1.0 - a}] if a < 1 else [])
        pooled = self._pooled_stage1(cfg, o)
        out = [TrainStage("stage1", model=lambda ctx, spec: self._model(cfg, 1, spec.num_outputs, o.stage1.finetune,
                                                                         o.stage1),
                          objective=terms1, train=dict(o.stage1.train),
                          key={**stage_key(o.stage1), **({"input": "pooled"} if pooled else {})},
                          datasets=self._pooled_datasets if pooled else None,
                          refit=o.stages == [1] and self._refit(cfg, o.stage1))]
        if 2 in o.stages:
            out.append(Step("gmps", run=lambda ctx: self._cluster(ctx, o), key=asdict(o.cluster)))
            epochs = int(o.stage2.train.get("epochs", cfg["train"]["epochs"]))
            out.append(TrainStage(
                "stage2", model=lambda ctx, spec: self._model(cfg, 2, spec.num_outputs, o.stage2.finetune, o.stage2,
                                                              ks=o.cluster.ks),
                objective=[{"name": "pseudo_label_ce", "masked_only": bool(o.stage2.masked_only)},
                           {"name": "cross_entropy", "key": "probe"}],
                train={**o.stage2.train, "patience": epochs + 1}, select="last", score=False,
                datasets=self._pseudo_datasets, init=lambda ctx, model: self._load(ctx, model, ["stage1"], heads=False),
                key=stage_key(o.stage2)))
        if 3 in o.stages:
            term = {"name": "am_softmax", "s": float(o.stage3.s), "m": float(o.stage3.m)} \
                if o.stage3.loss == "am_softmax" else {"name": "cross_entropy"}
            out.append(TrainStage(
                "stage3", model=lambda ctx, spec: self._model(cfg, 3, spec.num_outputs, o.stage3.finetune, o.stage3),
                objective=[term], train=dict(o.stage3.train),
                datasets=(lambda ctx, labels: self._block_datasets(ctx, labels, o.stage3.finetune))
                if o.stage3.head == "stats" else None,
                init=lambda ctx, model: self._load(ctx, model, ["stage2", "stage1"], heads=o.stage3.init_head),
                key=stage_key(o.stage3), refit=self._refit(cfg, o.stage3)))
        return out

    def _pooled_stage1(self, cfg: dict, o: GMPOptions) -> bool:
        """Stage 1 reads the cache's pooled statistics (mean + std per hidden state, speaker-normalised by the
        feature stage) instead of frames: a stats head on the frozen encoder computes nothing else from them."""
        return cfg["features"]["source"] == "cache" and o.stage1.head == "stats" and \
            self._trained_top(cfg, o.stage1.finetune) == 0

    def _pooled_datasets(self, ctx, labels) -> tuple:
        stage = ctx.feature()
        self._check_store(stage)
        read = {"level": "pooled", "layers": list(range(len(stage.store.layers)))}
        train, val, test = stage.datasets(ctx.fold, labels, **read)
        return _with_copies(ctx.cfg, ctx.manifest, ctx.fold, labels, stage, train, read), val, test

    @staticmethod
    def _refit(cfg: dict, o) -> bool:
        """``train.refit`` (or the stage's ``train.refit``): after validation chose the epoch count, the last stage
        is retrained on train + validation for that many epochs (as the baseline). Earlier stages keep their
        validation-selected checkpoint, so that a later stage's selection on validation is not made on speakers its
        starting point was trained on."""
        return bool({**cfg["train"], **o.train}.get("refit"))

    @staticmethod
    def _trained_top(cfg: dict, finetune) -> int:
        from serkit.models.staged_encoder import parse_finetune

        k = parse_finetune(finetune, 10**6)
        if cfg["features"]["source"] == "cache" and k < 0:
            raise ConfigError("gmp_atl: full fine-tuning (finetune: true) needs features.source: waveform; from the "
                              "cache use top:K")
        return k

    def _check_order(self, cfg: dict, o: GMPOptions) -> None:
        """From the cache, a later stage must train at least the top blocks an earlier stage trained."""
        if cfg["features"]["source"] != "cache":
            return
        ks = [("stage 1", self._trained_top(cfg, o.stage1.finetune))]
        if 2 in o.stages:
            ks.append(("stage 2", self._trained_top(cfg, o.stage2.finetune)))
        if 3 in o.stages:
            ks.append(("stage 3", self._trained_top(cfg, o.stage3.finetune)))
        for (before, kb), (what, k) in itertools.pairwise(ks):
            if k < kb:
                raise ConfigError(f"gmp_atl: {what} trains the top {k} block(s) from the cache but {before} trained "
                                  f"{kb}; give {what} at least as many top blocks (finetune: top:K)")

    @staticmethod
    def _load(ctx, model: nn.Module, upstream: list[str], heads: bool) -> None:
        """Encoder parameters the latest trained upstream stage changed; with ``heads``, stage 1's head and layer
        weights (BiLSTM or standardisation statistics, projection; AM-softmax class directions from its emotion
        layer)."""
        for name in upstream:
            r = ctx.results.get(name)
            if r is None:
                continue
            enc = {k: v for k, v in r.state().items() if k.startswith("encoder.")}
            if enc:
                own = dict(model.named_parameters())
                bad = sorted(set(enc) - set(own))
                if bad:
                    raise RuntimeError(f"{r.dir}: saved encoder parameters {bad[:3]} do not fit the model")
                model.load_state_dict(enc, strict=False)
                break
        if heads:
            state = {k: v for k, v in ctx.results["stage1"].state().items()
                     if (k.startswith("head.") and not k.startswith("head.gender")) or k.startswith("featurizer.")}
            own = model.state_dict()
            bad = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
            if bad:
                raise ConfigError(f"gmp_atl: stage3.init_head needs the stage-1 head sizes (hidden, proj_dim); "
                                  f"mismatch at {bad[:3]}")
            model.load_state_dict(state, strict=False)
            if getattr(model, "am", None) is not None and "head.emotion.weight" in state:
                with torch.no_grad():
                    model.am.weight.copy_(state["head.emotion.weight"])

    def _block_datasets(self, ctx, labels, finetune, copies: bool = True) -> tuple:
        """From the cache: each utterance's raw hidden state at the input of the trainable top blocks (with its
        speaker's statistics, for the blocks' outputs) and every hidden state's pooled statistics,
        speaker-normalised by the feature stage (the frozen layers' statistics: the model does not read and
        normalise their frames at every step); from waveforms: :meth:`build_datasets`. ``copies``: the training
        set also holds the speed-perturbed copies (``features.speed_perturb``)."""
        stage = ctx.feature()
        if ctx.cfg["features"]["source"] == "waveform":
            return self.build_datasets(ctx.cfg, ctx.manifest, ctx.fold, labels, stage)
        self._check_store(stage)
        n = len(stage.store.layers)
        first = n - 1 - self._trained_top(ctx.cfg, finetune)
        parts = []
        for read in ({"layers": [first], "speaker_stats": True}, {"level": "pooled", "layers": list(range(n))}):
            train, val, test = stage.datasets(ctx.fold, labels, **read)
            if copies:
                train = _with_copies(ctx.cfg, ctx.manifest, ctx.fold, labels, stage, train, read)
            parts.append((train, val, test))
        return tuple(WithPooledStats(f, p) for f, p in zip(*parts, strict=True))

    def _pseudo_datasets(self, ctx, labels) -> tuple:
        """Stage 2's sets: the real training utterances with their frames' pseudo-labels (k-means of real frames;
        the speed-perturbed copies have none and stay out of this stage)."""
        train, val, test = self._block_datasets(ctx, labels, self.options(ctx.cfg).stage2.finetune, copies=False)
        arrays = ctx.results["gmps"].arrays
        return PseudoLabelItems(train, [arrays[str(i)] for i in train.ids]), val, test

    # GMPs ------------------------------------------------------------------------------------------------------
    def _cluster(self, ctx, o: GMPOptions) -> dict:
        """Multi-scale k-means on training frames of hidden state ``cluster.layer`` -> pseudo-labels per frame."""
        from serkit.clustering import assign, fit_kmeans, resolve_backend

        cfg, oc = ctx.cfg, o.cluster
        backend = resolve_backend(oc.backend)
        stage = ctx.feature()
        src = cfg["features"]["source"]
        num_layers = int(stage.store.spec.get("num_layers") or len(stage.store.layers)) if stage.store is not None \
            else int(self._encoder(cfg).num_layers)
        layer = int(oc.layer) % num_layers
        k1 = self._trained_top(cfg, o.stage1.finetune)
        first1 = 0 if src == "waveform" else num_layers - 1 - max(k1, 0)
        # stage 1 changed this layer only when it trained the blocks below it (or ran on waveforms with training)
        from_stage1 = k1 != 0 and (src == "waveform" or layer > first1)
        ids = [str(i) for i in ctx.fold.train]
        if from_stage1 or src == "waveform":
            feats = self._model_frames(ctx, o, layer, ids)
        else:
            ds = stage.dataset(ids, ctx.labels, False, layers=[stage.stored_index(layer)], max_frames=None,
                               preload=False)
            feats = [np.asarray(ds[i]["features"][0], dtype=np.float32) for i in range(len(ds))]
        x = np.concatenate(feats)
        labs = {}
        for k in oc.ks:
            c = fit_kmeans(x, int(k), backend=backend, niter=int(oc.niter), seed=int(oc.seed),
                           max_points_per_centroid=oc.max_points_per_centroid)
            labs[int(k)] = assign(x, c, device="auto" if backend == "torch" else None)
        bounds = np.cumsum([0] + [len(f) for f in feats])
        per = {i: np.stack([labs[int(k)][bounds[j]:bounds[j + 1]] for k in oc.ks]).astype(np.int32)
               for j, i in enumerate(ids)}
        return {"arrays": per, "layer": layer, "frames": len(x), "utterances": len(ids),
                "used_clusters": {str(k): len(np.unique(labs[int(k)])) for k in oc.ks}, "backend": backend,
                "from_stage1": bool(from_stage1)}

    @torch.no_grad()
    def _model_frames(self, ctx, o: GMPOptions, layer: int, ids: list[str]) -> list[np.ndarray]:
        """Hidden state ``layer`` (normalised) of the stage-1 encoder for every training utterance, (T_i, D)."""
        from serkit.data.features import collate, to_device

        cfg = ctx.cfg
        model = self._model(cfg, 1, ctx.labels.num_outputs, o.stage1.finetune, o.stage1)
        self._load(ctx, model, ["stage1"], heads=False)
        device = ctx.device
        model.to(device).eval()
        keep = set(ids)
        train = self.build_datasets(cfg, ctx.manifest, ctx.fold, ctx.labels, ctx.feature())[0]
        from serkit.data.features import FeatureDataset

        if isinstance(train, FeatureDataset):
            train.max_frames, train.train = None, False
        elif hasattr(getattr(train, "base", None), "crop"):
            train.base.crop = None
        order = [j for j, i in enumerate(train.ids) if i in keep]
        bs = int(cfg["train"]["eval_batch_size"]) if model.encoder.encoder.padding_invariant else 1
        out = []
        for s in range(0, len(order), bs):
            batch = to_device(collate([train[j] for j in order[s:s + bs]]), device)
            hidden, fm = model.hidden_states(batch)
            h = hidden[layer].float().cpu()
            for j, n in enumerate(fm.sum(1).tolist()):
                out.append(h[j, :n].numpy())
        model.to("cpu")
        return out

