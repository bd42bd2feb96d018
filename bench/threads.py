"""Benchmark: torch CPU threads per kind of work, on an idle CPU and beside a busy process.

Three kinds of work, each at 1 thread and at ``--threads`` (default: every core, ``os.cpu_count()``):

- ``pooled head``: training steps of the default head (``serkit cv TABLE``: pooled mean+std of whisper-base's 7
  layers, ``(batch 32, 7, 1024)`` -> batch norm -> linear; :data:`serkit.train.defaults.BASELINE`) in a Lightning
  Trainer, as ``serkit cv`` runs them (forward, loss, backward, optimiser step; timed by a callback);
- ``frame head``: training steps of a frame-level recipe (MLL, ``configs/ravdess/mll.yaml``), on frames shaped like
  its cache: ``(batch 32, 7 layers, 44 frames, 512)`` (a 3.5 s clip at its frame stride 4), as bench/train_step.py;
- ``extraction``: feature extraction, ``serkit.encoders.runner.encode_signals`` with every hidden state of
  ``--encoder`` (default ``openai/whisper-tiny.en`` from the Hugging Face cache) on 8 clips of 4 s; the unit is
  clips per second.

Each measurement repeats its work for ``--seconds`` after a warm-up; thread counts alternate for ``--rounds`` rounds
and the best round counts (a shared machine's speed drifts). ``loaded``: the same with ``--busy`` processes spinning
on the CPU (``while True: pass``), started by this script and ended by it.

    python bench/threads.py                           # 1 and all cores, idle and beside one busy process
    python bench/threads.py --threads 4 --busy 2 --kinds pooled,frame
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _quiet() -> None:
    import lightning  # noqa: F401  (sets its loggers' levels on import: import first, then quieten)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def trainer_steps(cfg: dict, model, objective, labels, data: list[dict]) -> Callable[[], float]:
    """A function that trains ``len(data)`` steps in a fresh Lightning Trainer and returns the wall seconds of the
    steps themselves (Trainer set-up excluded)."""
    import lightning as L
    from train_step import StepTimer

    from serkit.train.module import SERModule

    def run() -> float:
        module = SERModule(model, objective, labels, {**cfg["train"], "seed": 0})
        timer = StepTimer()
        trainer = L.Trainer(max_steps=len(data), max_epochs=1, accelerator="cpu", devices=1, precision="32-true",
                            logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, callbacks=[timer], num_sanity_val_steps=0,
                            limit_val_batches=0)
        trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=None))
        return sum(timer.times)

    return run


def pooled_head(steps: int) -> tuple[Callable[[], float], int, str]:
    """The default head's training steps on pooled statistics ``(32, 7, 2 * 512)``."""
    from train_step import build

    from serkit.config import load_config
    from serkit.train.defaults import BASELINE, OBJECTIVES

    cfg = load_config({**BASELINE, "name": "bench-pooled", "corpus": "csv", "root": "unused.csv",
                       "objective": OBJECTIVES["classification"], "protocol": {"name": "random"}})
    torch.manual_seed(0)
    model, objective, labels = build(cfg, 7, 512, 8, 16)
    g = torch.Generator().manual_seed(0)
    data = [{"pooled": torch.randn(32, 7, 1024, generator=g), "emotion": torch.randint(0, 8, (32,), generator=g),
             "speaker": torch.randint(0, 16, (32,), generator=g), "gender": torch.randint(0, 2, (32,), generator=g)}
            for _ in range(steps)]
    return trainer_steps(cfg, model, objective, labels, data), steps, "steps/s"


def frame_head(steps: int) -> tuple[Callable[[], float], int, str]:
    """MLL's training steps on frames ``(32, 7, 44, 512)``."""
    from train_step import batches, build

    from serkit.config import load_config

    cfg = load_config(ROOT / "configs" / "ravdess" / "mll.yaml")
    torch.manual_seed(0)
    model, objective, labels = build(cfg, 7, 512, 8, 16)
    data = batches(steps, 32, 7, 44, 512, 8, 16)
    return trainer_steps(cfg, model, objective, labels, data), steps, "steps/s"


def extraction(encoder_id: str, clips: int = 8, seconds: float = 4.0) -> tuple[Callable[[], float], int, str]:
    """Every hidden state of ``encoder_id`` for ``clips`` clips of ``seconds`` s (one batch)."""
    from serkit.encoders import load_encoder
    from serkit.encoders.runner import encode_signals

    encoder = load_encoder(encoder_id, mode="native", device="cpu")
    rng = np.random.default_rng(0)
    signals = [(i, (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)) for i in range(clips)]
    layers = list(range(encoder.num_layers))

    def run() -> float:
        t = time.perf_counter()
        with torch.inference_mode():
            for _ in encode_signals(encoder, signals, layers):
                pass
        return time.perf_counter() - t

    return run, clips, "clips/s"


def rate(work: Callable[[], float], units: int, seconds: float) -> float:
    """Units per second of ``work`` repeated for at least ``seconds`` (after one warm-up call)."""
    work()
    spent, done = 0.0, 0
    while spent < seconds:
        spent += work()
        done += units
    return done / spent


@contextlib.contextmanager
def busy(n: int):
    """``n`` processes spinning on the CPU while the block runs; ended (by their pids) when it leaves."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        time.sleep(0.5)
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="the thread count to compare with 1")
    ap.add_argument("--busy", type=int, default=1, help="busy processes beside the loaded measurements")
    ap.add_argument("--kinds", default="pooled,frame,extraction")
    ap.add_argument("--encoder", default="openai/whisper-tiny.en")
    ap.add_argument("--steps", type=int, default=10, help="training steps per Trainer run")
    ap.add_argument("--seconds", type=float, default=3.0, help="timed seconds per measurement")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    _quiet()
    if "HF_HUB_CACHE" not in os.environ and (ROOT.parent / "shared" / "hf-cache").is_dir():
        os.environ["HF_HUB_CACHE"] = str(ROOT.parent / "shared" / "hf-cache")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    makers = {"pooled": ("pooled head", lambda: pooled_head(args.steps)),
              "frame": ("frame head (MLL)", lambda: frame_head(args.steps)),
              "extraction": (f"extraction ({args.encoder.split('/')[-1]})", lambda: extraction(args.encoder))}
    kinds = [k.strip() for k in args.kinds.split(",")]
    works = {kind: (makers[kind][0], *makers[kind][1]()) for kind in kinds}  # (name, work, units, unit)
    counts = sorted({1, args.threads})
    results: dict[tuple[str, str, int], float] = {}
    for load in ("idle", "loaded"):
        with busy(args.busy) if load == "loaded" else contextlib.nullcontext():
            for kind in kinds:
                name, work, units, unit = works[kind]
                for _ in range(args.rounds):
                    for n in counts:
                        torch.set_num_threads(n)
                        key = (kind, load, n)
                        results[key] = max(results.get(key, 0.0), rate(work, units, args.seconds))
                print(f"  {name}, {load}: " + ", ".join(f"{n} thread(s) {results[(kind, load, n)]:.2f} {unit}"
                                                       for n in counts), file=sys.stderr)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU(s); best of {args.rounds} rounds of {args.seconds:g} s; "
          f"loaded: beside {args.busy} busy process(es)")
    print("| work | unit | threads | idle | loaded |")
    print("|---|---|---:|---:|---:|")
    for kind in kinds:
        name, _, _, unit = works[kind]
        for n in counts:
            print(f"| {name} | {unit} | {n} | {results[(kind, 'idle', n)]:.2f} | {results[(kind, 'loaded', n)]:.2f} |")
        if len(counts) > 1:
            hi = counts[-1]
            print(f"| {name} | {hi} / 1 threads | | {results[(kind, 'idle', hi)] / results[(kind, 'idle', 1)]:.2f}x "
                  f"| {results[(kind, 'loaded', hi)] / results[(kind, 'loaded', 1)]:.2f}x |")

if __name__ == "__main__":
    main()
