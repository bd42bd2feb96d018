"""``serkit train``: one model on the whole corpus, validation speakers carved out, saved for prediction.

A model folder holds ``config.yaml``, ``model.safetensors`` (downstream weights), ``labels.json``,
``encoder.json`` (encoder id, revision, feature mode, layers, precision) and ``meta.json`` (with the
resolved feature and training precision).
"""

from __future__ import annotations

import time
from pathlib import Path

from safetensors.torch import save_file

from serkit.config import dump, load_config
from serkit.io import atomic_path, atomic_write_json, atomic_write_text
from serkit.precision import run_precision
from serkit.protocols import Fold, carve_validation


def train_final(config, out_dir, overrides: list[str] | None = None, log=print) -> Path:
    from serkit.train.cv import feature_source, load_experiment_manifest
    from serkit.train.features import usable_ids
    from serkit.train.fit import train_module

    cfg = load_config(config, overrides)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = load_experiment_manifest(cfg)
    source = feature_source(cfg, manifest, out)
    if source is not None:
        manifest = usable_ids(source, manifest)
    ids = manifest["id"].astype(str).tolist()
    opts = dict(cfg["protocol"] or {})
    train, val, val_spk = carve_validation(manifest, ids, opts, int(cfg["train"]["seed"]))
    fold = Fold(0, "all-data", True, train, val, [], [], val_spk)
    t0 = time.time()
    module, labels, _, _, _ = train_module(cfg, manifest, fold, source, out / "work")
    state = {k: v.detach().contiguous().cpu() for k, v in module.model.state_dict().items()}
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(state, str(tmp))
    atomic_write_text(out / "config.yaml", dump(cfg))
    atomic_write_json(out / "labels.json", labels.to_dict())
    precision = run_precision(cfg, source)
    enc = dict(source.spec) if source is not None else {"encoder": cfg["encoder"]["id"], "mode": cfg["encoder"]["mode"]}
    enc["layers_spec"] = cfg["encoder"].get("layers", "all")
    enc["precision"] = precision["features"]
    atomic_write_json(out / "encoder.json", enc)
    spec = module.spec
    atomic_write_json(out / "meta.json", {
        "spec": {"task": spec.task, "num_outputs": spec.num_outputs, "num_layers": spec.num_layers,
                 "hidden_size": spec.hidden_size, "num_speakers": spec.num_speakers, "class_names": spec.class_names},
        "n_train": len(train), "n_val": len(val), "val_speakers": val_spk, "precision": precision,
        "train_seconds_max": float(manifest["duration"].max()),
        "train_wall_seconds": round(time.time() - t0, 1),
    })
    log(f"trained on {len(train)} utterances, validated on {len(val)} ({len(val_spk)} speakers)")
    return out
