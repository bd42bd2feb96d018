"""The SUPERB / EmoBox-style downstream baseline.

featurizer (pick or weight encoder layers) -> linear projection -> masked pooling -> head, with optional speaker
and gender heads for multi-task recipes. Input ``batch["features"]``: ``(batch, layers, frames, dim)`` from the
feature cache (or the encoder) and ``batch["frame_mask"]`` ``(batch, frames)``.
"""

from __future__ import annotations

import torch
from torch import nn

from serkit.encoders.featurizer import Featurizer
from serkit.models.heads import ClassificationHead, RegressionHead
from serkit.models.pooling import build_pooling
from serkit.models.registry import ModelSpec, register_model


@register_model("baseline")
class BaselineModel(nn.Module):
    """Options (config ``model:``): ``layers`` (spec, default ``weighted``), ``normalize`` (layer-norm each hidden
    state), ``proj_dim`` (256; 0 = no projection), ``pooling`` (mean | max | stats | attentive_stats | attention |
    flam), ``hidden`` (head MLP sizes), ``dropout``, ``speaker_head`` / ``gender_head`` (bool)."""

    def __init__(self, spec: ModelSpec, layers="weighted", normalize: bool = True, proj_dim: int = 256,
                 pooling: str = "mean", hidden: list[int] | None = None, dropout: float = 0.1,
                 speaker_head: bool = False, gender_head: bool = False, activation: bool = True):
        super().__init__()
        self.featurizer = Featurizer(spec.num_layers, spec.hidden_size, layers, normalize=normalize)
        d = self.featurizer.output_size
        if proj_dim:
            proj = [nn.Linear(d, proj_dim)] + ([nn.ReLU()] if activation else [])
            self.projection = nn.Sequential(*proj, nn.Dropout(dropout))
            d = proj_dim
        else:
            self.projection = nn.Identity()
        self.pooling = build_pooling(pooling, d)
        e = getattr(self.pooling, "output_size", d)
        if spec.task == "classification":
            self.head = ClassificationHead(e, spec.num_outputs, hidden, dropout)
        else:
            self.head = RegressionHead(e, spec.num_outputs, hidden, dropout)
        self.speaker_head = nn.Linear(e, spec.num_speakers) if speaker_head and spec.num_speakers else None
        self.gender_head = nn.Linear(e, 2) if gender_head else None
        self.task = spec.task

    def forward(self, batch: dict) -> dict:
        x = self.featurizer(batch["features"])
        frames = self.projection(x)
        mask = batch.get("frame_mask")
        pooled = self.pooling(frames, mask)
        if isinstance(pooled, tuple):
            pooled = pooled[0]
        out = {"embedding": pooled, "frames": frames, "frame_mask": mask}
        y = self.head(pooled)
        out["logits" if self.task == "classification" else "prediction"] = y
        if self.speaker_head is not None:
            out["speaker_logits"] = self.speaker_head(pooled)
        if self.gender_head is not None:
            out["gender_logits"] = self.gender_head(pooled)
        return out


@register_model("pooled_mlp")
class PooledMLP(nn.Module):
    """Utterance-level model on cached pooled statistics ``batch["pooled"]`` ``(batch, layers, 2*dim)``:
    (nuisance projection) -> standardise -> (weighted sum or concatenation of layers) -> MLP head. A fast reference
    downstream. ``nuisance_rank`` > 0: a :class:`~serkit.models.nuisance.NuisanceProjection` of that rank on the
    chosen layers' concatenated statistics, fitted on the training utterances by :meth:`fit_input`."""

    def __init__(self, spec: ModelSpec, layers="all", hidden: list[int] | None = None, dropout: float = 0.2,
                 combine: str = "concat", input_norm: str = "batchnorm", nuisance_rank: int = 0):
        super().__init__()
        from serkit.encoders.featurizer import parse_layers
        from serkit.models.nuisance import NuisanceProjection

        self.indices, weighted = parse_layers(layers, spec.num_layers)
        self.combine = "weighted" if weighted else combine
        d = 2 * spec.hidden_size
        self.nuisance = NuisanceProjection(d * len(self.indices), nuisance_rank) if nuisance_rank else None
        # batchnorm: per-feature standardisation with running statistics of the training data (what a
        # StandardScaler does for a linear model); layernorm: per-utterance, per-layer normalisation
        if input_norm == "batchnorm":
            self.norm = _FeatureBatchNorm(d, len(self.indices))
        elif input_norm == "layernorm":
            self.norm = nn.LayerNorm(d, elementwise_affine=False)
        elif input_norm == "none":
            self.norm = nn.Identity()
        else:
            raise ValueError(f"pooled_mlp input_norm must be batchnorm, layernorm or none, got {input_norm!r}")
        if self.combine == "weighted":  # asked for here or by the feature stage's layers: weighted
            self.weights = nn.Parameter(torch.zeros(len(self.indices)))
            e = d
        else:
            e = d * len(self.indices)
        self.dropout = nn.Dropout(dropout)
        cls = ClassificationHead if spec.task == "classification" else RegressionHead
        self.head = cls(e, spec.num_outputs, hidden if hidden is not None else [256], dropout)
        self.task = spec.task

    def forward(self, batch: dict) -> dict:
        x = batch["pooled"][:, self.indices]  # (batch, k, 2*dim)
        if self.nuisance is not None:
            x = self.nuisance(x.flatten(1)).reshape(x.shape)
        x = self.norm(x)
        if self.combine == "weighted":
            x = torch.einsum("k,bkd->bd", torch.softmax(self.weights, 0), x)
        else:
            x = x.flatten(1)
        x = self.dropout(x)
        y = self.head(x)
        return {"embedding": x, "logits" if self.task == "classification" else "prediction": y}

    @property
    def fits_input(self) -> bool:
        """Whether the input has fitted operations (:meth:`fit_input`) to fit before training."""
        return self.nuisance is not None

    @torch.no_grad()
    def fit_input(self, batch: dict) -> None:
        """Fit the input's fitted operations (the nuisance projection) on the whole training set ``batch``
        (``pooled`` ``(n, layers, 2*dim)``, ``speaker``, ``emotion`` ``(n,)``); nothing without them."""
        if self.nuisance is not None:
            self.nuisance.fit(batch["pooled"][:, self.indices].flatten(1), batch["speaker"], batch["emotion"])

    @torch.no_grad()
    def fit_ridge(self, pooled: torch.Tensor, targets: torch.Tensor, alpha: float) -> None:
        """Fit the model in closed form (``train.solver: ridge``): the standardisation from ``pooled``
        ``(n, layers, 2*dim)`` (population mean / variance, as a StandardScaler) and the linear head as ridge
        regression of ``targets`` ``(n, outputs)`` on the standardised, concatenated layers,
        ``min ||Z W + b - Y||^2 + alpha ||W||^2`` (intercept unpenalised), solved in float64 in the dual form
        when there are fewer utterances than features. Needs ``combine: concat``, ``hidden: []``, regression."""
        from serkit.errors import ConfigError

        linear = self.head.net[0] if len(self.head.net) == 1 and isinstance(self.head.net[0], nn.Linear) else None
        if self.task != "regression" or self.combine != "concat" or linear is None:
            raise ConfigError("train.solver: ridge fits a linear regression head: model pooled_mlp with hidden: [], "
                              "combine: concat and task: regression")
        x = pooled[:, self.indices].double().flatten(1)  # (n, k * 2 * dim)
        if isinstance(self.norm, _FeatureBatchNorm):
            bn = self.norm.bn
            mean, var = x.mean(0), x.var(0, unbiased=False)
            bn.running_mean.copy_(mean.to(bn.running_mean.dtype))
            bn.running_var.copy_(var.to(bn.running_var.dtype))
            z = (x - mean) / torch.sqrt(var + bn.eps)
        elif isinstance(self.norm, nn.Identity):
            z = x
        else:
            raise ConfigError("train.solver: ridge needs model.input_norm batchnorm or none")
        y = targets.double()
        zm, ym = z.mean(0), y.mean(0)
        zc, yc = z - zm, y - ym
        n, d = zc.shape
        eye = torch.eye(min(n, d), dtype=torch.float64)
        if n < d:
            w = zc.T @ torch.linalg.solve(zc @ zc.T + alpha * eye, yc)  # (d, outputs)
        else:
            w = torch.linalg.solve(zc.T @ zc + alpha * eye, zc.T @ yc)
        linear.weight.copy_(w.T.to(linear.weight.dtype))
        linear.bias.copy_((ym - zm @ w).to(linear.bias.dtype))


class _FeatureBatchNorm(nn.Module):
    """Standardise every feature of ``(batch, layers, dim)`` with batch / running statistics (no affine)."""

    def __init__(self, dim: int, layers: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim * layers, affine=False, momentum=0.05)

    def forward(self, x):
        b, k, d = x.shape
        return self.bn(x.reshape(b, k * d)).reshape(b, k, d)
