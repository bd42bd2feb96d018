"""Benchmark: naive per-file Whisper feature extraction vs serkit's batched native-length extraction, in fp32
and bf16.

Naive: stock ``WhisperFeatureExtractor`` (30 s padding) + encoder with ``output_hidden_states``, one file at a
time, on a subset of ``--naive-n`` clips (spread over the corpus); its per-clip time is extrapolated to all clips.
serkit: ``extract_to_cache`` on every clip (native length, batched, all layers, into a temporary store), once per
precision in ``--precisions`` (default ``fp32,bf16``: weights cast to bf16 once, float32 residual stream).
Each phase runs in its own process so that peak RSS (``resource.getrusage``) is per phase. FLOPs are counted
with ``torch.utils.flop_counter.FlopCounterMode``; each row's share of peak is against the matmul rate measured in
its own precision (fp32 and bf16 peaks are both measured, before and after the timed phases).

    python bench/extract.py                       # RAVDESS from ../shared, whisper-base, CPU, fp32 and bf16
    python bench/extract.py --device cuda
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SERKIT_DATA") or ROOT.parent / "shared")  # scripts/env.sh sets SERKIT_DATA


def _env() -> None:
    if "HF_HUB_CACHE" not in os.environ and (SHARED / "hf-cache").is_dir():
        os.environ["HF_HUB_CACHE"] = str(SHARED / "hf-cache")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _manifest(args):
    import pandas as pd
    import soundfile as sf

    if args.manifest:
        from serkit.manifest import read_manifest

        df = read_manifest(args.manifest)
    else:
        files = sorted(glob.glob(args.glob))
        if not files:
            sys.exit(f"no audio matches {args.glob!r}; pass --manifest or --glob")
        df = pd.DataFrame(
            {"id": [Path(f).stem for f in files], "path": files, "duration": [sf.info(f).duration for f in files]}
        )
    if args.clips and args.clips < len(df):  # an even spread over the corpus
        df = df.iloc[:: len(df) // args.clips].iloc[: args.clips].reset_index(drop=True)
    return df


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def phase_peak(args) -> dict:
    """Measured matmul rate (GFLOP/s) per precision: the best 1 s window over several square sizes (a shared VM's
    speed drifts, so the best window is the honest ceiling; the main run repeats it at the end)."""
    import torch

    sizes = (1024, 2048, 3072) if args.device == "cpu" else (4096, 8192)
    out = {}
    for name in _precisions(args):
        dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[name]
        best = 0.0
        for n in sizes:
            a = torch.randn(n, n, device=args.device, dtype=dt)
            b = torch.randn(n, n, device=args.device, dtype=dt)
            torch.matmul(a, b)
            _sync(args.device)
            for _ in range(3):
                iters, t0 = 0, time.perf_counter()
                while time.perf_counter() - t0 < 1.0:
                    torch.matmul(a, b)
                    iters += 1
                    if args.device == "cuda" and iters % 10 == 0:
                        _sync(args.device)
                _sync(args.device)
                best = max(best, 2 * n**3 * iters / (time.perf_counter() - t0) / 1e9)
        out[name] = best
    return out


def _precisions(args) -> list[str]:
    names = [p.strip() for p in args.precisions.split(",") if p.strip()]
    return list(dict.fromkeys(["fp32", *names]))  # fp32 always: the naive loop and the ratios refer to it


def phase_naive(args) -> dict:
    import numpy as np
    import torch
    import transformers
    from torch.utils.flop_counter import FlopCounterMode

    from serkit.audio import read_audio

    transformers.logging.set_verbosity_error()
    df = _manifest(args)
    fe = transformers.WhisperFeatureExtractor.from_pretrained(args.encoder)
    model = transformers.WhisperModel.from_pretrained(args.encoder).encoder.to(args.device).eval()
    step = max(1, len(df) // args.naive_n)
    subset = df.iloc[::step].iloc[: args.naive_n]
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        model(
            torch.zeros(1, fe.feature_size, fe.nb_max_frames, device=args.device), output_hidden_states=True
        )
    flops_per_clip = fc.get_total_flops()
    # warm-up (first call allocates)
    with torch.inference_mode():
        model(
            torch.zeros(1, fe.feature_size, fe.nb_max_frames, device=args.device), output_hidden_states=True
        )
    _sync(args.device)
    t0 = time.perf_counter()
    for path in subset["path"]:
        sig = read_audio(path)
        feats = fe(sig, sampling_rate=16000, return_tensors="pt").input_features.to(args.device)
        with torch.inference_mode():
            out = model(feats, output_hidden_states=True)
        _ = [np.asarray(h.float().cpu()) for h in out.hidden_states]
    _sync(args.device)
    wall = time.perf_counter() - t0
    res = {
        "clips_timed": len(subset),
        "seconds_timed": wall,
        "audio_seconds_timed": float(subset["duration"].sum()),
        "flops_per_clip": flops_per_clip,
        "rss_mib": _rss_mib(),
    }
    if args.device == "cuda":
        res["gpu_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return res


def phase_serkit(args) -> dict:
    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from serkit.encoders import load_encoder
    from serkit.features.extraction import extract_to_cache

    df = _manifest(args)
    out = Path(args.out) / args.precision if args.out else Path(tempfile.mkdtemp(prefix="serkit-bench-"))
    rep = extract_to_cache(
        df,
        args.encoder,
        "all",
        out,
        mode="native",
        device=args.device,
        precision=args.precision,
        batch_seconds=args.batch_seconds,
        progress=not args.quiet,
        overwrite=True,
    )
    res = {
        "clips": rep.computed + rep.reused,
        "computed": rep.computed,
        "failures": len(rep.failures),
        "seconds": rep.wall_seconds,
        "audio_seconds": rep.audio_seconds,
        "disk_bytes": rep.disk_bytes,
        "store": str(out),
        "rss_mib": _rss_mib(),
        "precision": json.loads((out / "store.json").read_text())["precision"],
    }
    if args.device == "cuda":
        res["gpu_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    # useful FLOPs: flops(T) = a + b T + c T^2 (convs/linears linear in T, attention quadratic), fitted on 3 lengths
    enc = load_encoder(args.encoder, mode="native")
    secs = np.array([1.0, 4.0, 8.0])
    flops = []
    for s in secs:
        with torch.inference_mode(), FlopCounterMode(display=False) as fc:
            enc(torch.zeros(1, int(s * 16000)))
        flops.append(fc.get_total_flops())
    coef = np.polyfit(secs, np.array(flops, dtype=float), 2)
    res["flops_total"] = float(np.polyval(coef, df["duration"].to_numpy(dtype=float)).sum())
    res["flops_per_clip"] = res["flops_total"] / len(df)
    if not args.keep:
        import shutil

        shutil.rmtree(out, ignore_errors=True)
    return res


def _child(phase: str, argv: list[str]) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, *argv, "--phase", phase], check=False, capture_output=True, text=True
    )
    if proc.returncode != 0:
        sys.exit(f"phase {phase} failed:\n{proc.stderr[-4000:]}")
    sys.stderr.write(proc.stderr[-2000:] if phase == "serkit" else "")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--manifest", help="manifest CSV/Parquet (default: --glob)")
    p.add_argument("--glob", default=str(SHARED / "corpora" / "ravdess" / "Actor_*" / "*.flac"))
    p.add_argument("--encoder", default="openai/whisper-base")
    p.add_argument("--clips", type=int, default=None, help="use this many clips, spread over the corpus (default all)")
    p.add_argument("--naive-n", type=int, default=120, help="clips the naive loop times (extrapolated to all)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--precisions", default="fp32,bf16", help="serkit runs, in this order (fp32 always included)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help=argparse.SUPPRESS)
    p.add_argument("--batch-seconds", type=float, default=120.0)
    p.add_argument("--out", help="store folder (default: a temporary one, removed unless --keep)")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--phase", choices=("peak", "naive", "serkit"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    _env()
    if args.phase:
        print(
            json.dumps({"peak": phase_peak, "naive": phase_naive, "serkit": phase_serkit}[args.phase](args))
        )
        return
    raw = [a for a in (argv if argv is not None else sys.argv[1:])]
    df = _manifest(args)
    n, audio = len(df), float(df["duration"].sum())
    precisions = _precisions(args)
    peak = _child("peak", raw)
    naive = _child("naive", raw)
    ours = {p: _child("serkit", [*raw, "--precision", p]) for p in precisions}
    peak_end = _child("peak", raw)
    peaks = {p: max(peak[p], peak_end[p]) for p in precisions}
    per_clip = naive["seconds_timed"] / naive["clips_timed"]
    naive_all = per_clip * n
    rows = [
        (
            f"naive per-file, 30 s padding, fp32 (timed {naive['clips_timed']}, extrapolated to {n})",
            "fp32",
            naive_all,
            naive["flops_per_clip"] * n,
            naive["rss_mib"],
            naive.get("gpu_peak_mib"),
        )
    ]
    for p, r in ours.items():
        rows.append(
            (
                f"serkit native, batched, all layers -> cache, {r['precision']} ({r['computed']} clips)",
                p,
                r["seconds"],
                r["flops_total"],
                r["rss_mib"],
                r.get("gpu_peak_mib"),
            )
        )
    import torch

    print(
        f"\n{args.encoder} on {n} clips ({audio / 60:.1f} min of audio), device {args.device}; "
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}; measured matmul peak (best 1 s window, before / after the "
        f"timed phases): "
        + ", ".join(f"{p} {peaks[p]:.1f} GFLOP/s ({peak[p]:.1f} / {peak_end[p]:.1f})" for p in precisions)
        + "\n"
    )
    print(
        "| method | wall s (all clips) | utt/s | RTF | x naive | x serkit fp32 | peak RSS MiB | GFLOP/clip | GFLOP/s "
        "| % of peak (own precision) |" + (" GPU peak MiB |" if args.device == "cuda" else "")
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if args.device == "cuda" else ""))
    for name, prec, wall, flops, rss, gpu in rows:
        rate = flops / wall / 1e9
        line = (
            f"| {name} | {wall:.1f} | {n / wall:.2f} | {wall / audio:.4f} | {naive_all / wall:.1f} | "
            f"{ours['fp32']['seconds'] / wall:.2f} | {rss:.0f} | {flops / n / 1e9:.2f} | {rate:.1f} | "
            f"{100 * rate / peaks[prec]:.0f}% |"
        )
        print(line + (f" {gpu:.0f} |" if gpu is not None else ""))
    print(
        "\nspeed-up over the naive loop: "
        + ", ".join(f"serkit {p} {naive_all / r['seconds']:.1f}x" for p, r in ours.items())
        + " (goal >= 10x)"
        + "".join(
            f"; serkit {p} / serkit fp32: {ours['fp32']['seconds'] / r['seconds']:.2f}x (goal >= 1.5x, target 2.5x)"
            for p, r in ours.items()
            if p != "fp32"
        )
    )
    print(
        f"naive per clip {per_clip:.3f} s measured on {naive['clips_timed']} clips, extrapolated to {n}. serkit "
        f"wall time includes model load, hashing and writing the cache; its FLOPs are the useful ones (a + bT + "
        f"cT^2 fit, padding excluded)."
    )
    for p, r in ours.items():
        print(
            f"cache size on disk ({p}): {r['disk_bytes'] / 2**20:.1f} MiB ({r['disk_bytes'] / n / 1024:.0f} "
            f"KiB/clip, float16 frames of all layers + float32 pooled stats)"
        )


if __name__ == "__main__":
    main()
