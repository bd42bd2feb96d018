"""``recipe_options`` of the GMP-ATL recipe (:mod:`serkit.recipes.gmp_atl`), one dataclass per stage, validated on
construction; :func:`stage_key` is a stage's options as the key of its stored checkpoints."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from serkit.models.gmp_atl import HEADS

__all__ = ["ClusterOptions", "GMPOptions", "Stage1Options", "Stage2Options", "Stage3Options", "stage_key"]

STAGE3_LOSSES = ("am_softmax", "cross_entropy")
CLASS_WEIGHTS = (None, "balanced")


def _check_head(where: str, head: str, dropout: float) -> None:
    if head not in HEADS:
        raise ValueError(f"{where}.head must be one of {HEADS}, got {head!r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"{where}.dropout must be in [0, 1), got {dropout!r}")


@dataclass
class Stage1Options:
    finetune: bool | str = False
    head: str = "bilstm"
    hidden: int = 256
    proj_dim: int = 256
    dropout: float = 0.3
    alpha: float = 0.9
    class_weights: str | None = None
    train: dict = field(default_factory=dict)

    def __post_init__(self):
        _check_head("stage1", self.head, self.dropout)
        if self.class_weights not in CLASS_WEIGHTS:
            raise ValueError(f"stage1.class_weights must be null or 'balanced', got {self.class_weights!r}")


@dataclass
class ClusterOptions:
    layer: int = -3
    ks: list = field(default_factory=lambda: [64, 512, 4096])
    backend: str = "auto"
    niter: int = 25
    max_points_per_centroid: int | None = 256
    seed: int = 0


@dataclass
class Stage2Options:
    finetune: bool | str = True
    mask_prob: float = 0.08
    span: int = 10
    min_masks: int = 2
    hidden: int = 256
    masked_only: bool = True
    train: dict = field(default_factory=dict)


@dataclass
class Stage3Options:
    finetune: bool | str = True
    head: str = "bilstm"
    loss: str = "am_softmax"
    s: float = 30.0
    m: float = 0.2
    hidden: int = 256
    proj_dim: int = 256
    dropout: float = 0.3
    init_head: bool = False
    train: dict = field(default_factory=dict)

    def __post_init__(self):
        _check_head("stage3", self.head, self.dropout)
        if self.loss not in STAGE3_LOSSES:
            raise ValueError(f"stage3.loss must be one of {STAGE3_LOSSES}, got {self.loss!r}")


@dataclass
class GMPOptions:
    """``recipe_options`` of ``gmp_atl`` (module docstring)."""

    stages: list = field(default_factory=lambda: [1, 2, 3])
    stage_root: str | None = None
    stage1: Stage1Options = field(default_factory=Stage1Options)
    cluster: ClusterOptions = field(default_factory=ClusterOptions)
    stage2: Stage2Options = field(default_factory=Stage2Options)
    stage3: Stage3Options = field(default_factory=Stage3Options)

    def __post_init__(self):
        stages = sorted(int(s) for s in self.stages)
        if stages not in ([1], [1, 3], [1, 2, 3]):
            raise ValueError(f"stages must be [1], [1, 3] or [1, 2, 3], got {self.stages}")
        self.stages = stages
        if 3 in stages and self.stage3.init_head and self.stage3.head != self.stage1.head:
            raise ValueError(f"stage3.init_head starts the stage-3 head from stage 1's: both need the same head, got "
                             f"stage1.head {self.stage1.head!r} and stage3.head {self.stage3.head!r}")


def stage_key(o) -> dict:
    """A stage's key: its options less ``train`` (the runner keys the schedule); options added later are left out
    at their old behaviour (``head: bilstm``, which ignores ``dropout``; no class weights), so that stages trained
    before they existed are reused."""
    d = {k: v for k, v in asdict(o).items() if k != "train"}
    if d.get("head") == "bilstm":
        d.pop("head")
        d.pop("dropout")
    if d.get("class_weights", "") is None:
        d.pop("class_weights")
    return d
