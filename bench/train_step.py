"""Benchmark: training steps per second of a frame-level recipe (MLL by default) in fp32 and bf16, on this device.

The recipe's own model and objective (built from its config as ``serkit cv`` builds them) train inside a Lightning
Trainer with ``precision="32-true"`` and then ``"bf16-mixed"`` (what ``train.precision: fp32 / bf16`` select), on
synthetic batches shaped like the feature cache's: ``features`` ``(batch, layers, frames, dim)`` float32 (whisper-base:
7 x 512), a full ``frame_mask``, random emotions and speakers. Steps after ``--warmup`` are timed by a callback
(``on_train_batch_start`` to ``on_train_batch_end``: forward, loss, backward, optimiser step); the two precisions
alternate for ``--rounds`` rounds and the best round of each counts (a shared machine's speed drifts).

    python bench/train_step.py                                   # configs/ravdess/mll.yaml, CPU
    python bench/train_step.py --config configs/ravdess/hcld.yaml --frames 375
"""

from __future__ import annotations

import argparse
import time

import lightning as L
import numpy as np
import torch


class StepTimer(L.pytorch.callbacks.Callback):
    """Wall seconds of every training batch (forward, loss, backward, optimiser step)."""

    def __init__(self):
        self.times: list[float] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.times.append(time.perf_counter() - self._t)


def build(cfg: dict, layers: int, dim: int, classes: int, speakers: int):
    """The recipe's model and objective for a whisper-base-shaped cache (``layers`` x ``dim``)."""
    from serkit.data.labels import LabelMap
    from serkit.models.registry import ModelSpec
    from serkit.recipes.catalog import get_recipe

    names = [f"c{i}" for i in range(classes)]
    labels = LabelMap("classification", names, [], [f"s{i}" for i in range(speakers)])
    spec = ModelSpec(task="classification", num_outputs=classes, num_layers=layers, hidden_size=dim,
                     num_speakers=speakers, class_names=names, extra={"encoder": cfg["encoder"]})
    recipe = get_recipe(cfg["recipe"])
    rng = np.random.default_rng(0)
    enc = {"emotion": rng.integers(0, classes, 512), "speaker": rng.integers(0, speakers, 512),
           "gender": rng.integers(0, 2, 512)}
    return recipe.build_model(cfg, spec), recipe.build_objective(cfg, labels, enc, spec), labels


def batches(n: int, batch: int, layers: int, frames: int, dim: int, classes: int, speakers: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        out.append({
            "features": torch.randn(batch, layers, frames, dim, generator=g),
            "frame_mask": torch.ones(batch, frames, dtype=torch.bool),
            "emotion": torch.randint(0, classes, (batch,), generator=g),
            "speaker": torch.randint(0, speakers, (batch,), generator=g),
            "gender": torch.randint(0, 2, (batch,), generator=g),
        })
    return out


def run(cfg: dict, precision: str, data: list[dict], args) -> float:
    """Steps/s over the timed steps of one Trainer run."""
    from serkit.precision import lightning_precision
    from serkit.train.module import SERModule

    torch.manual_seed(0)
    model, objective, labels = build(cfg, args.layers, args.dim, args.classes, args.speakers)
    module = SERModule(model, objective, labels, {**cfg["train"], "seed": 0})
    timer = StepTimer()
    trainer = L.Trainer(max_steps=len(data), max_epochs=1, accelerator=args.device, devices=1,
                        precision=lightning_precision(precision, args.device), logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[timer], num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=None))
    timed = timer.times[args.warmup:]
    return len(timed) / sum(timed)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/ravdess/mll.yaml")
    ap.add_argument("--batch", type=int, default=None, help="default: the config's train.batch_size")
    ap.add_argument("--frames", type=int, default=44,
                    help="frames per item (default 44: a 3.5 s RAVDESS clip at MLL's frame stride 4, 12.5 Hz)")
    ap.add_argument("--layers", type=int, default=7)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--speakers", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
    args = ap.parse_args(argv)

    import logging
    import warnings

    from serkit.config import load_config

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    cfg = load_config(args.config)
    batch = args.batch or int(cfg["train"]["batch_size"])
    data = batches(args.steps + args.warmup, batch, args.layers, args.frames, args.dim, args.classes, args.speakers)
    best = {"fp32": 0.0, "bf16": 0.0}
    for _ in range(args.rounds):
        for p, seen in list(best.items()):
            best[p] = max(seen, run(cfg, p, data, args))
    from serkit.precision import bf16_supported

    print(f"{cfg['name']} (recipe {cfg['recipe']}, model {cfg['model']['name']}): batch {batch} x {args.layers} layers "
          f"x {args.frames} frames x {args.dim}; {args.steps} timed steps after {args.warmup} warm-up, best of "
          f"{args.rounds} rounds; device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"native bf16: {bf16_supported('cuda' if args.device == 'gpu' else 'cpu')}")
    print("| precision | Lightning | steps/s | ms/step |")
    print("|---|---|---:|---:|")
    for p, v in best.items():
        print(f"| {p} | {'32-true' if p == 'fp32' else 'bf16-mixed'} | {v:.2f} | {1000 / v:.0f} |")
    print(f"bf16 / fp32 steps/s: {best['bf16'] / best['fp32']:.2f}x")


if __name__ == "__main__":
    main()
