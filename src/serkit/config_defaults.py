"""Every config key's default value: the one source of defaults.

:mod:`serkit.config` fills a loaded YAML from here, :mod:`serkit.options` builds the typed sections from here, and
code that needs a default reads it here rather than restating it. Beside them: an ``augment:`` section's keys and
what files from before serkit recorded precisions ran in.
"""

DEFAULTS: dict = {
    "name": "experiment",
    "recipe": "baseline",
    "corpus": None,
    "root": None,
    "manifest": None,
    "class_set": None,
    "task": "classification",
    "targets": ["arousal", "valence", "dominance"],
    "protocol": None,
    "encoder": {"id": "openai/whisper-base", "mode": "native", "layers": "all", "device": "auto",
                "batch_seconds": 120.0, "precision": "fp32",
                "level_db": None},
    # the feature stage (serkit.train.feature_stage): what every model sees of the encoder's hidden states
    "features": {"source": "cache", "cache_dir": None, "crop": "none", "level": "frames", "preload": True,
                 "normalize": None, "speaker_min_seconds": 10.0, "speaker_min_utterances": 5, "layers": None,
                 "pool_frames": 1, "max_frames": None, "frame_norm": "none", "speed_perturb": []},
    "model": {"name": "baseline"},
    "objective": None,
    "augment": None,
    "train": {"epochs": 30, "batch_size": 32, "lr": 1e-3, "weight_decay": 1e-4, "optimizer": "adamw",
              "scheduler": "none", "warmup_epochs": 0, "lr_decay": 1.0, "patience": 8, "seed": 0,
              "monitor": "auto", "precision": "fp32", "accelerator": "auto", "devices": 1, "strategy": "auto",
              "num_workers": 0, "grad_clip": 1.0, "deterministic": True,
              "min_epochs": 1, "eval_batch_size": 64, "decay_epochs": None, "progress": True, "refit": False,
              "num_nodes": 1, "logger": "csv", "select": None, "solver": "gradient", "ridge_alpha": 100.0,
              "group_by_length": 0, "fused_optimizer": False, "threads": "auto",
              "final_stage": "last"},
    "predict": {"window_seconds": 10.0, "hop_seconds": 5.0},
    "recipe_options": {},
}

#: An ``augment:`` section's keys when the section is given (the section itself defaults to None: no augmentation);
#: ``mode: auto`` is resolved by the recipe (variants on cached features, on_the_fly with the encoder in the loop).
AUGMENT_DEFAULTS: dict = {"name": "none", "mode": "auto"}

#: What files written before serkit recorded precisions ran in (a feature store's ``store.json``, a model folder's
#: ``encoder.json`` / ``meta.json``, a fold's ``result.json``): fp32 features and Lightning's 32-true training. A fact
#: about those files, not a config default (which may change; the files cannot).
UNRECORDED_PRECISION: dict = {"features": "fp32", "train": "32-true"}


def with_defaults(cfg: dict) -> dict:
    """``cfg`` with every key it leaves out at its default, section by section (a copy; nothing is checked: a saved
    config from :func:`serkit.config.load_config` is already valid). A list of encoders (views) is kept as given."""
    out = {**DEFAULTS, **cfg}
    for section, defaults in DEFAULTS.items():
        if isinstance(defaults, dict) and defaults and isinstance(cfg.get(section), dict):
            out[section] = {**defaults, **cfg[section]}
    return out
