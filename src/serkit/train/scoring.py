"""Scoring a trained module: no-grad passes over a dataset, probabilities and the task's metrics."""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch.utils.data import DataLoader

from serkit.config_defaults import DEFAULTS
from serkit.data.features import to_device
from serkit.data.labels import LabelMap
from serkit.metrics import classification_metrics, regression_metrics
from serkit.train.logs import _best_epoch, _best_val, _keep_old_metrics, read_fold_metrics  # noqa: F401
from serkit.train.module import SERModule

log = logging.getLogger("serkit")


def inference_device(train_cfg: dict | None = None) -> torch.device:
    """Where no-grad passes outside Lightning run (test scoring, frame extraction): the GPU when training would use
    one (``train.accelerator`` auto / gpu / cuda and CUDA available), else the CPU."""
    acc = str((train_cfg or {}).get("accelerator", DEFAULTS["train"]["accelerator"]))
    if acc in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


@torch.no_grad()
def predict_outputs(module: SERModule, loader: DataLoader, device: torch.device | str | None = None
                    ) -> dict[str, np.ndarray]:
    """Run the model over ``loader``; concatenate every per-utterance output (batch-first tensors).

    ``device``: where to run (default :func:`inference_device`); Lightning hands a trained module back on the CPU,
    so without this a GPU run would score its test set on the CPU. The module goes back where it was afterwards.
    """
    module.eval()
    home = next(module.parameters()).device
    device = torch.device(device) if device is not None else inference_device()
    module.to(device)
    outs: dict[str, list] = {}
    try:
        for batch in loader:
            batch = to_device(batch, device)
            out = module.model(batch)
            n = len(batch["emotion"])
            for k, v in out.items():
                if torch.is_tensor(v) and v.ndim >= 1 and v.shape[0] == n and v.ndim <= 2 and k != "frame_mask":
                    outs.setdefault(k, []).append(v.float().cpu().numpy())
    finally:
        module.to(home)
    return {k: np.concatenate(v) for k, v in outs.items()}


def task_metrics(task: str, labels: LabelMap, outputs: dict, enc: dict) -> dict:
    """Metrics of ``outputs`` (``probs`` or ``logits``; ``prediction``) against encoded labels ``enc``."""
    if task == "classification":
        return classification_metrics(enc["emotion"], class_probabilities(outputs).argmax(-1), labels.classes)
    return regression_metrics(outputs["prediction"], enc["targets"], labels.targets)


def class_probabilities(outputs: dict) -> np.ndarray:
    """``outputs["probs"]``, or the softmax of ``outputs["logits"]``."""
    if "probs" in outputs:
        return np.asarray(outputs["probs"])
    return torch.softmax(torch.from_numpy(np.asarray(outputs["logits"], dtype=np.float32)), -1).numpy()
