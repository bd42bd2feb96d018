"""Label encodings: class names <-> indices, speakers and genders -> indices, regression targets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from serkit.errors import ManifestError

GENDER_INDEX = {"female": 0, "male": 1}


@dataclass
class LabelMap:
    """Everything needed to turn manifest rows into tensors and predictions back into names."""

    task: str
    classes: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    speakers: list[str] = field(default_factory=list)

    @classmethod
    def fit(cls, manifest: pd.DataFrame, task: str, targets: list[str], train_ids: list[str] | None = None) -> LabelMap:
        """Classes come from the whole manifest (sorted) so every fold shares one index; speakers from training."""
        classes = sorted(manifest["emotion"].astype(str).unique()) if task == "classification" else []
        if task == "regression":
            missing = [t for t in targets if t not in manifest.columns]
            if missing:
                raise ManifestError(f"regression targets {missing} are not manifest columns ({list(manifest.columns)})")
        spk_src = manifest if train_ids is None else manifest[manifest["id"].isin(set(train_ids))]
        speakers = sorted(spk_src["speaker"].astype(str).unique())
        return cls(task, classes, list(targets) if task == "regression" else [], speakers)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LabelMap:
        return cls(**d)

    @property
    def num_outputs(self) -> int:
        return len(self.classes) if self.task == "classification" else len(self.targets)

    def encode(self, rows: pd.DataFrame) -> dict[str, np.ndarray]:
        """Arrays per row: ``emotion`` (long; -1 when unknown), ``speaker`` (-1 unseen), ``gender`` (-1 unknown),
        ``targets`` (float32 (n, attributes)) for regression."""
        cidx = {c: i for i, c in enumerate(self.classes)}
        sidx = {s: i for i, s in enumerate(self.speakers)}
        out = {
            "emotion": np.array([cidx.get(str(e), -1) for e in rows["emotion"]], dtype=np.int64),
            "speaker": np.array([sidx.get(str(s), -1) for s in rows["speaker"]], dtype=np.int64),
            "gender": np.array([GENDER_INDEX.get(str(g), -1) for g in rows["gender"]], dtype=np.int64),
        }
        if self.task == "regression":
            out["targets"] = rows[self.targets].to_numpy(dtype=np.float32)
        return out
