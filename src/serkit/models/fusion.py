"""IF-MVSE building blocks: interactive fusion of multi-view utterance embeddings.

Liu, Gu, Luo, Zheng, Lu, Zong, "Interactive Fusion of Multi-View Speech Embeddings via Pretrained Large-Scale
Speech Models for Speech Emotional Attribute Prediction in Naturalistic Conditions", Interspeech 2025.

A *view* is one utterance embedding per utterance, shape (batch, dim_view): the mean-pooled final hidden state
of one pretrained encoder (Whisper-large-v3 encoder: 1280; WavLM / HuBERT large: 1024), computed elsewhere.

* :class:`InteractiveAttention` - Dual-Feature Interactive Attention, Eqs. (2)-(4).
* :class:`SelfBalancingGate`    - Multi-View Self-Balancing Gated strategy (MSBG), Eqs. (5)-(6).
* :class:`ViewMLP`              - the (1024, 512, out) MLP head, ReLU + dropout 0.5 (Sec. 3.2).
* :class:`SingleViewModel`      - one view -> MLP: the paper's score sets S1, S3, S5.
* :class:`FusedPairModel`       - two views -> attention -> gate -> MLP: score sets S2, S4.
* :class:`MultiViewScorer`      - any number of views and any list of named score sets.

The score sets are combined afterwards with weights found on the validation set (Eq. 7), see
:mod:`serkit.fusion_weights`.

How "two identical paths per view" is read here
-----------------------------------------------
Sec. 3.2 says: "For the MLP layer in the network, we adopt a dual-branch structure. Each large-model-encoded
speech feature traverses two identical MLP paths". The paper gives no figure text or code that pins this down.
We read "dual-branch" as the two views of a fused pair (Sec. 2.2.1: "a dual-path symmetric architecture"):
each view has its own branch of identical architecture but *unshared* weights - its own projection to the
common width (Whisper 1280 -> 1024, Sec. 2.2) and its own gate transforms ``W_i^p``, ``W_i^q`` - and the gate
merges the two branches before the (1024, 512, out) MLP. The other reading - every view goes through two
parallel, independently initialised MLPs whose outputs are averaged - is available as ``num_paths=2`` on
:class:`ViewMLP`, :class:`SingleViewModel` and :class:`FusedPairModel` (default 1, i.e. our reading).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from serkit.errors import ConfigError


class InteractiveAttention(nn.Module):
    """Dual-Feature Interactive Attention (Eqs. 2-4); no parameters.

    ``F_inter = F1 * F2`` (Eq. 2, Hadamard product), ``alpha = sigmoid(tanh(F_inter))`` (Eq. 3),
    ``F^1 = alpha * F1``, ``F^2 = alpha * F2`` (Eq. 4). Eq. 4 writes ``alpha_1`` and ``alpha_2`` but Eq. 3
    defines a single ``alpha`` from the symmetric product, so both views share one attention vector.
    """

    def forward(self, f1: torch.Tensor, f2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``f1``, ``f2``: (batch, dim) -> ``(F^1, F^2, alpha)``, each (batch, dim); alpha in (0, 1)."""
        if f1.shape != f2.shape:
            raise ValueError(f"InteractiveAttention: views must have equal shapes, got {tuple(f1.shape)} "
                             f"and {tuple(f2.shape)} (project them to a common width first)")
        alpha = torch.sigmoid(torch.tanh(f1 * f2))
        return alpha * f1, alpha * f2, alpha


class SelfBalancingGate(nn.Module):
    """Multi-View Self-Balancing Gate (MSBG, Eqs. 5-6), after the gated fusion of GBAN (Liu et al. 2022).

    ``p_i = tanh(W_i^p F_i)``, ``z_p = sigmoid(W_z^p [F1, F2])``, ``q_i = tanh(W_i^q F^i)``,
    ``z_q = sigmoid(W_z^q [F^1, F^2])`` (Eq. 5);
    ``S = z_p * p1 + (1 - z_p) * p2 + z_q * q1 + (1 - z_q) * q2`` (Eq. 6), so ``S`` lies in (-2, 2).

    Bias choice: the equations are written without offsets, but as in gated multimodal units generally (GMU,
    GBAN) each ``W`` is an affine ``nn.Linear`` by default (``bias=True``): a bias lets the gates learn a prior
    preference for one view, and lets ``tanh`` work off-centre. ``bias=False`` gives the literal equations.

    Args:
        dim: width of each input view (both views must share it).
        out_dim: width of ``S`` (and of every ``p``, ``q``, ``z``).
        bias: affine (default) or purely linear transforms.
    """

    def __init__(self, dim: int, out_dim: int, bias: bool = True):
        super().__init__()
        self.w1p = nn.Linear(dim, out_dim, bias=bias)
        self.w2p = nn.Linear(dim, out_dim, bias=bias)
        self.wzp = nn.Linear(2 * dim, out_dim, bias=bias)
        self.w1q = nn.Linear(dim, out_dim, bias=bias)
        self.w2q = nn.Linear(dim, out_dim, bias=bias)
        self.wzq = nn.Linear(2 * dim, out_dim, bias=bias)

    def forward(self, f1: torch.Tensor, f2: torch.Tensor, f1_hat: torch.Tensor,
                f2_hat: torch.Tensor) -> torch.Tensor:
        """Primary features ``f1``, ``f2`` and interaction features ``f1_hat``, ``f2_hat``, all (batch, dim)
        -> ``S`` (batch, out_dim)."""
        p1, p2 = torch.tanh(self.w1p(f1)), torch.tanh(self.w2p(f2))
        zp = torch.sigmoid(self.wzp(torch.cat([f1, f2], dim=-1)))
        q1, q2 = torch.tanh(self.w1q(f1_hat)), torch.tanh(self.w2q(f2_hat))
        zq = torch.sigmoid(self.wzq(torch.cat([f1_hat, f2_hat], dim=-1)))
        return zp * p1 + (1 - zp) * p2 + zq * q1 + (1 - zq) * q2


class _MLP(nn.Sequential):
    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int, dropout: float):
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU(), nn.Dropout(dropout)]
            d = h
        layers.append(nn.Linear(d, out_dim))
        super().__init__(*layers)


class ViewMLP(nn.Module):
    """Optional input projection, then MLP ``in -> hidden[0] -> hidden[1] ... -> out`` (Sec. 3.2).

    ReLU and dropout after every hidden layer; the output layer is linear. The paper's "(1024, 512, 1)" is
    ``hidden=(1024, 512)`` with one model per attribute; here ``out_dim`` is the number of attributes
    (regression) or classes (classification). (If "(1024, ...)" is read as the input width, use
    ``hidden=(512,)``.)

    Args:
        in_dim: width of the input embedding, e.g. 1280 (Whisper-large) or 1024.
        out_dim: number of outputs.
        hidden: hidden widths.
        dropout: dropout after each hidden ReLU (paper: 0.5).
        input_proj: if given, a linear layer ``in_dim -> input_proj`` first (paper: Whisper 1280 -> 1024).
        num_paths: number of parallel MLPs of identical shape (independent weights) whose outputs are averaged;
            1 by default, see the module docstring.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: Sequence[int] = (1024, 512), dropout: float = 0.5,
                 input_proj: int | None = None, num_paths: int = 1):
        super().__init__()
        if num_paths < 1:
            raise ConfigError(f"ViewMLP: num_paths must be >= 1, got {num_paths}")
        self.proj = nn.Linear(in_dim, input_proj) if input_proj else nn.Identity()
        d = input_proj or in_dim
        self.paths = nn.ModuleList(_MLP(d, hidden, out_dim, dropout) for _ in range(num_paths))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, in_dim) -> (batch, out_dim)."""
        x = self.proj(x)
        if len(self.paths) == 1:
            return self.paths[0](x)
        return torch.stack([p(x) for p in self.paths]).mean(0)


class SingleViewModel(nn.Module):
    """One view straight into a :class:`ViewMLP` (score sets S1, S3, S5 of the paper)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: Sequence[int] = (1024, 512), dropout: float = 0.5,
                 input_proj: int | None = None, num_paths: int = 1):
        super().__init__()
        self.mlp = ViewMLP(in_dim, out_dim, hidden, dropout, input_proj, num_paths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, in_dim) -> scores (batch, out_dim)."""
        return self.mlp(x)


class FusedPairModel(nn.Module):
    """Two views -> per-view projection -> :class:`InteractiveAttention` -> :class:`SelfBalancingGate` -> MLP.

    The paper's score sets S2 (Whisper + WavLM) and S4 (HuBERT + WavLM). A view whose width differs from
    ``fuse_dim`` is first mapped by its own linear layer (Sec. 2.2: Whisper 1280 -> 1024); a view already of
    width ``fuse_dim`` passes unchanged (set ``project_all=True`` to give every view a projection).

    Args:
        dims: widths of the two views, e.g. ``(1280, 1024)``.
        out_dim: number of outputs.
        fuse_dim: common width for the attention (paper: 1024).
        gate_dim: width of the gate output ``S`` fed to the MLP (default ``fuse_dim``).
        hidden, dropout, num_paths: of the MLP after the gate (see :class:`ViewMLP`).
        bias: of the gate transforms (see :class:`SelfBalancingGate`).
    """

    def __init__(self, dims: Sequence[int], out_dim: int, fuse_dim: int = 1024, gate_dim: int | None = None,
                 hidden: Sequence[int] = (1024, 512), dropout: float = 0.5, bias: bool = True,
                 project_all: bool = False, num_paths: int = 1):
        super().__init__()
        if len(dims) != 2:
            raise ConfigError(f"FusedPairModel: needs exactly two view widths, got {list(dims)}")
        self.proj = nn.ModuleList(
            nn.Linear(d, fuse_dim) if (d != fuse_dim or project_all) else nn.Identity() for d in dims
        )
        self.attention = InteractiveAttention()
        gate_dim = gate_dim or fuse_dim
        self.gate = SelfBalancingGate(fuse_dim, gate_dim, bias=bias)
        self.mlp = ViewMLP(gate_dim, out_dim, hidden, dropout, None, num_paths)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """``x1`` (batch, dims[0]), ``x2`` (batch, dims[1]) -> scores (batch, out_dim)."""
        f1, f2 = self.proj[0](x1), self.proj[1](x2)
        f1_hat, f2_hat, _ = self.attention(f1, f2)
        return self.mlp(self.gate(f1, f2, f1_hat, f2_hat))


class MultiViewScorer(nn.Module):
    """Holds any number of views and any list of named score sets; returns ``{name: scores (batch, out)}``.

    ``score_sets`` is a config list, each item ``{"name": str, "views": [view]}`` (a :class:`SingleViewModel`)
    or ``{"name": str, "views": [view_a, view_b]}`` (a :class:`FusedPairModel`); any other keys of an item
    (``hidden``, ``dropout``, ``input_proj``, ``fuse_dim``, ``bias``, ``num_paths`` ...) override ``defaults``
    for that score set. The paper's five sets::

        [{"name": "S1", "views": ["whisper"]}, {"name": "S2", "views": ["whisper", "wavlm"]},
         {"name": "S3", "views": ["wavlm"]},   {"name": "S4", "views": ["hubert", "wavlm"]},
         {"name": "S5", "views": ["hubert"]}]

    Every score set has its own parameters (the paper trains them as separate models; training them jointly,
    e.g. with a sum of CCC losses over the sets, is the caller's choice).

    Args:
        view_dims: ``{view: width}``, e.g. ``{"whisper": 1280, "wavlm": 1024, "hubert": 1024}``.
        score_sets: see above.
        out_dim: number of outputs of every score set.
        **defaults: options passed to every score set's model unless the item overrides them.
    """

    _SINGLE_KEYS = frozenset({"hidden", "dropout", "input_proj", "num_paths"})
    _PAIR_KEYS = frozenset({"hidden", "dropout", "fuse_dim", "gate_dim", "bias", "project_all", "num_paths"})

    def __init__(self, view_dims: Mapping[str, int], score_sets: Sequence[Mapping], out_dim: int, **defaults):
        super().__init__()
        if not score_sets:
            raise ConfigError("MultiViewScorer: score_sets is empty")
        bad_defaults = sorted(set(defaults) - self._SINGLE_KEYS - self._PAIR_KEYS)
        if bad_defaults:
            raise ConfigError(f"MultiViewScorer: unknown options {bad_defaults}")
        self.view_dims = dict(view_dims)
        self.views_of: dict[str, list[str]] = {}
        self.models = nn.ModuleDict()
        for i, spec in enumerate(score_sets):
            spec = dict(spec)
            name = spec.pop("name", None)
            views = list(spec.pop("views", []))
            if not name:
                raise ConfigError(f"score_sets[{i}]: missing 'name'")
            if name in self.models:
                raise ConfigError(f"score_sets[{i}]: duplicate name {name!r}")
            unknown = [v for v in views if v not in self.view_dims]
            if unknown:
                raise ConfigError(f"score_sets[{i}] ({name}): unknown views {unknown}; known: "
                                  f"{sorted(self.view_dims)}")
            opts = {**defaults, **spec}
            if len(views) == 1:
                allowed = self._SINGLE_KEYS
                model: nn.Module = SingleViewModel(self.view_dims[views[0]], out_dim,
                                                   **{k: v for k, v in opts.items() if k in allowed})
            elif len(views) == 2:
                allowed = self._PAIR_KEYS
                model = FusedPairModel([self.view_dims[v] for v in views], out_dim,
                                       **{k: v for k, v in opts.items() if k in allowed})
            else:
                raise ConfigError(f"score_sets[{i}] ({name}): 'views' must name one view or a pair, "
                                  f"got {views}")
            bad = sorted(set(spec) - allowed)
            if bad:
                raise ConfigError(f"score_sets[{i}] ({name}): unknown options {bad}; allowed {sorted(allowed)}")
            self.models[name] = model
            self.views_of[name] = views

    @property
    def names(self) -> list[str]:
        """Score-set names in config order."""
        return list(self.models)

    def forward(self, views: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``views``: ``{view: (batch, dim_view)}`` (extra views are ignored) -> ``{name: (batch, out_dim)}``."""
        out = {}
        for name, model in self.models.items():
            names = self.views_of[name]
            missing = [v for v in names if v not in views]
            if missing:
                raise KeyError(f"MultiViewScorer: score set {name!r} needs views {missing}, got {sorted(views)}")
            out[name] = model(*(views[v] for v in names))
        return out


class ScoreSetModel(nn.Module):
    """One IF-MVSE score set behind serkit's batch-dict interface: ``batch["views"]`` ``{name: (B, dim)}`` ->
    ``{"prediction": (B, attributes)}`` (regression) or ``{"logits": (B, classes)}`` (classification).

    ``score_set``: ``{"name", "views": [one view] | [two views]}``; ``defaults``: :class:`MultiViewScorer`
    options (``hidden``, ``dropout``, ``fuse_dim``, ...)."""

    def __init__(self, view_dims: Mapping[str, int], score_set: Mapping, task: str, num_outputs: int, **defaults):
        super().__init__()
        self.name = score_set["name"]
        self.key = "logits" if task == "classification" else "prediction"
        self.scorer = MultiViewScorer(view_dims, [score_set], num_outputs, **defaults)

    def forward(self, batch: dict) -> dict:
        return {self.key: self.scorer(batch["views"])[self.name]}
