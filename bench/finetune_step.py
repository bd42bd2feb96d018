"""Time one encoder fine-tuning training step (GMP-ATL stage 1: whole encoder -> BiLSTM head) and its data path.

Usage::

    python bench/finetune_step.py [--config configs/ravdess/gmp-atl-gpu.yaml] [--batch 64] [--steps 10]
                                  [--warmup 3] [--workers 4] [--device auto] [--precision auto]

Prints, per phase, milliseconds per step and utterances / audio seconds per second: the DataLoader alone (reading
and collating the config's corpus, ``--workers`` processes), host-to-device copy, forward, backward and optimiser
step (each timed after a device synchronisation), and the whole step; plus peak GPU memory. Run it on a GPU to see
whether a slow fine-tuning epoch is the loop's data and Python overhead or the arithmetic.
"""

from __future__ import annotations

import argparse
import time

import torch


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/ravdess/gmp-atl-gpu.yaml")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    args = ap.parse_args(argv)

    from torch.utils.data import DataLoader

    from serkit.config import load_config
    from serkit.data.features import WaveformDataset, collate, loader_workers, to_device
    from serkit.data.labels import LabelMap
    from serkit.encoders.registry import load_encoder
    from serkit.models.staged_encoder import StagedEncoder
    from serkit.recipes.gmp_atl import GMPStageModel
    from serkit.train.experiment import load_experiment_manifest

    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    bf16 = args.precision == "bf16" or (args.precision == "auto" and dev.type == "cuda")
    cfg = load_config(args.config)
    manifest = load_experiment_manifest(cfg)
    labels = LabelMap.fit(manifest, "classification", ["emotion"])
    n = args.batch * (args.steps + args.warmup)
    ids = list(manifest["id"].astype(str))[:n]
    t0 = time.perf_counter()
    ds = WaveformDataset(manifest, ids, labels, crop=None, train=True)
    t_ds = time.perf_counter() - t0
    dl = DataLoader(ds, batch_size=args.batch, shuffle=True, collate_fn=collate, drop_last=True,
                    **loader_workers({"num_workers": args.workers}))
    t0 = time.perf_counter()
    batches = list(dl)
    t_load = time.perf_counter() - t0
    audio_s = sum(float(b["lengths"].sum()) for b in batches) / 16000.0

    enc = load_encoder(cfg["encoder"]["id"], mode=cfg["encoder"].get("mode", "native"), eval_mode=False)
    model = GMPStageModel(StagedEncoder(enc, "waveform", True), 1, labels.num_outputs).to(dev).train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = {"h2d": 0.0, "forward": 0.0, "backward": 0.0, "optimiser": 0.0, "step": 0.0}
    for i, b in enumerate(batches):
        timed = i >= args.warmup
        _sync(dev)
        s0 = time.perf_counter()
        b = to_device(b, dev)
        _sync(dev)
        s1 = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(b)
            loss = torch.nn.functional.cross_entropy(out["logits"].float(), b["emotion"].long())
        _sync(dev)
        s2 = time.perf_counter()
        loss.backward()
        _sync(dev)
        s3 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(dev)
        s4 = time.perf_counter()
        if timed:
            for k, v in zip(times, (s1 - s0, s2 - s1, s3 - s2, s4 - s3, s4 - s0)):
                times[k] += v
    steps = len(batches) - args.warmup
    per_step_audio = audio_s / len(batches)
    print(f"device {dev} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'cpu'}), "
          f"{'bf16 autocast' if bf16 else 'fp32'}, {cfg['encoder']['id']}, batch {args.batch}, "
          f"{steps} timed steps after {args.warmup} warm-up, "
          f"{per_step_audio / args.batch:.2f} s of audio per utterance")
    print(f"dataset set-up (reading {len(ids)} files): {t_ds:.2f} s; DataLoader pass, {args.workers} workers: "
          f"{1000 * t_load / len(batches):.1f} ms/batch ({len(batches) * args.batch / t_load:.0f} utt/s)")
    print("| phase | ms / step | utt / s | audio s / s |")
    print("|---|---:|---:|---:|")
    for k, v in times.items():
        ms = 1000 * v / steps
        print(f"| {k} | {ms:.1f} | {args.batch * steps / v:.0f} | {per_step_audio * steps / v:.0f} |")
    if dev.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated(dev) / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
