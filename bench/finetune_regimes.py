"""Benchmark: training steps per second and peak memory of each encoder fine-tuning regime, fp32 and bf16.

Regimes (``encoder.finetune``, :mod:`serkit.models.finetune`) of the config's encoder with its head in the loop
(:class:`~serkit.models.encoder_model.EncoderDownstream`, as ``serkit cv`` builds it): ``frozen`` (the head alone,
encoder under no_grad), ``top2`` (the top 2 blocks), ``lora`` (the config's adapters, or rank 8 on every
projection) and ``full`` (every weight). Each regime and precision runs in its own process on the same batches
(``--clips`` clips of the config's corpus, a fixed random choice, ``--batch`` per step in length-sorted
batches): ``--warmup`` untimed steps, then ``--steps`` timed AdamW steps (forward, backward, optimiser). bf16 is
``torch.autocast`` over fp32 weights, what ``train.precision: bf16`` does. Peak memory: the GPU's allocator peak,
or on a CPU the process's peak resident set (``ru_maxrss``) and its growth over the loaded model's (what training
adds). Ratios against the frozen head in the same precision come from the same run. The last column projects one
fold of ``serkit cv`` from the measured rates: ``--epochs`` passes over ``--train-items`` utterances plus a no-grad
pass over ``--eval-items`` per epoch, times 2 with a refit.

    python bench/finetune_regimes.py --config configs/emodb/baseline-ft.yaml --clips 16 --batch 8 --steps 2
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

REGIMES = {"frozen": False, "top2": "top:2", "lora": None, "full": True}


def _sync(dev):
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_one(args) -> dict:
    """One regime in one precision (this process): the measurement as a dict."""
    import numpy as np
    import torch

    from serkit.config import load_config
    from serkit.data.features import WaveformDataset, collate, to_device
    from serkit.data.labels import LabelMap
    from serkit.models.encoder_model import EncoderDownstream
    from serkit.recipes.catalog import get_recipe
    from serkit.train.datasets import load_loop_encoder, model_spec
    from serkit.train.experiment import load_experiment_manifest

    torch.manual_seed(0)
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    cfg = load_config(args.config)
    manifest = load_experiment_manifest(cfg)
    labels = LabelMap.fit(manifest, cfg["task"], cfg["targets"])
    ids = list(manifest["id"].astype(str))
    pick = np.random.default_rng(0).choice(len(ids), size=min(args.clips, len(ids)), replace=False)
    ds = WaveformDataset(manifest, [ids[i] for i in pick], labels, crop=None, train=False)
    items = sorted((ds[i] for i in range(len(ds))), key=lambda it: len(it["waveform"]))
    batches = [collate(items[s:s + args.batch]) for s in range(0, len(items), args.batch)]
    audio_s = sum(float(b["lengths"].sum()) for b in batches) / 16000.0
    finetune = REGIMES[args.regime]
    if finetune is None:  # the config's adapters (or rank 8 on every projection)
        own = cfg["encoder"].get("finetune")
        finetune = own if isinstance(own, dict) and own.get("mode") == "lora" else "lora"
        finetune = {k: v for k, v in finetune.items() if k != "warmup_epochs"} if isinstance(finetune, dict) \
            else finetune
    encoder, layers = load_loop_encoder(cfg)
    spec = model_spec(cfg, labels, None, encoder, layers)
    head = get_recipe(cfg["recipe"]).build_model(cfg, spec)
    model = EncoderDownstream(encoder, head, layers, finetune, adapters=True).to(dev).train()
    groups = model.param_groups(1e-4, 0.01)
    opt = torch.optim.AdamW(groups)
    trainable = sum(p.numel() for g in groups for p in g["params"])
    bf16 = args.precision == "bf16"
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    rss0 = _rss_mib()
    n_steps = args.warmup + args.steps
    t_train = t_eval = 0.0
    utts = audio = 0.0
    for i in range(n_steps):
        b = to_device(batches[i % len(batches)], dev)
        _sync(dev)
        t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(b)
        loss = torch.nn.functional.cross_entropy(out["logits"].float(), b["emotion"].long())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(dev)
        if i >= args.warmup:
            t_train += time.perf_counter() - t0
            utts += len(b["lengths"])
            audio += float(b["lengths"].sum()) / 16000.0
    model.eval()
    with torch.no_grad():
        for i in range(args.steps):
            b = to_device(batches[i % len(batches)], dev)
            _sync(dev)
            t0 = time.perf_counter()
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                model(b)
            _sync(dev)
            t_eval += time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else _rss_mib()
    return {"regime": args.regime, "precision": args.precision, "device": str(dev),
            "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
            "threads": torch.get_num_threads(), "trainable": trainable,
            "steps_per_s": args.steps / t_train, "utt_per_s": utts / t_train, "audio_s_per_s": audio / t_train,
            "eval_utt_per_s": utts / t_eval, "peak_mib": peak,
            "growth_mib": None if dev.type == "cuda" else peak - rss0, "clip_seconds": audio_s / len(items)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/emodb/baseline-ft.yaml")
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--regimes", default="frozen,top2,lora,full")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--epochs", type=int, default=10, help="for the per-fold projection")
    ap.add_argument("--train-items", type=int, default=321, help="for the projection (EmoDB: 3 of 5 folds' speakers)")
    ap.add_argument("--eval-items", type=int, default=214, help="validation + test utterances (projection)")
    ap.add_argument("--refit", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--json", default=None, help="also write the measurements to this file")
    ap.add_argument("--one", nargs=2, metavar=("REGIME", "PRECISION"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        args.regime, args.precision = args.one
        print(json.dumps(run_one(args)))
        return
    rows = []
    for precision in args.precisions.split(","):
        for regime in args.regimes.split(","):
            if regime not in REGIMES:
                ap.error(f"--regimes: {regime!r} is not one of {sorted(REGIMES)}")
            cmd = [sys.executable, __file__, "--one", regime, precision] + [
                a for k, v in (("--config", args.config), ("--clips", args.clips), ("--batch", args.batch),
                               ("--steps", args.steps), ("--warmup", args.warmup), ("--device", args.device))
                for a in (k, str(v))]
            p = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if p.returncode != 0:
                print(f"{regime} {precision}: failed\n{p.stderr[-3000:]}", file=sys.stderr)
                continue
            rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
            print(f"  {regime} {precision}: {rows[-1]['steps_per_s']:.3f} steps/s", file=sys.stderr, flush=True)
    if not rows:
        sys.exit(1)
    r0 = rows[0]
    where = r0["gpu"] or f"cpu, {r0['threads']} thread(s)"
    print(f"{args.config}: {args.clips} clips ({r0['clip_seconds']:.2f} s mean), batch {args.batch}, "
          f"{args.steps} timed steps after {args.warmup}; {where}")
    passes = 2 if args.refit else 1
    print(f"| regime | precision | trainable params | steps/s | x frozen | audio s/s | peak MiB | "
          f"growth MiB | fold projection ({args.epochs} epochs{', + refit' if args.refit else ''}) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        base = next((x for x in rows if x["regime"] == "frozen" and x["precision"] == r["precision"]), None)
        ratio = f"{r['steps_per_s'] / base['steps_per_s']:.2f}" if base else "-"
        epoch_s = args.train_items / r["utt_per_s"] + args.eval_items / r["eval_utt_per_s"]
        fold_min = passes * args.epochs * epoch_s / 60
        growth = f"{r['growth_mib']:.0f}" if r["growth_mib"] is not None else "-"
        print(f"| {r['regime']} | {r['precision']} | {r['trainable']:,} | {r['steps_per_s']:.3f} | {ratio} | "
              f"{r['audio_s_per_s']:.1f} | {r['peak_mib']:.0f} | {growth} | {fold_min:.0f} min |")
    if args.json:
        from pathlib import Path

        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
