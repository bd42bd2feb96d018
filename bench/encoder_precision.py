"""Benchmark: serkit's Whisper encoder on real clips in fp32, bf16 (two ways) and int8 dynamic quantisation.

Variants, each run on the same batches (``--clips`` RAVDESS clips spread over the corpus, native length, in
length-sorted batches of ``--batch``), rounds alternating so that a shared machine's drift hits all alike:

* ``fp32``: the encoder as loaded.
* ``bf16 weights``: what ``precision: bf16`` does (``Encoder.cast(torch.bfloat16)``: weights cast once; the fused
  inference block keeps the residual stream and layer norms in float32).
* ``bf16 autocast``: fp32 weights under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (weights re-cast per call).
* ``int8 dynamic``: ``torch.ao.quantization.quantize_dynamic`` on every ``nn.Linear`` (the stock layer forward runs,
  since quantised linears have no plain weight for the fused projection).

Prints seconds per round (best of ``--rounds``), the speed-up over fp32, and per hidden state the relative error
``||x - x_fp32|| / ||x_fp32||`` over real frames and the cosine of utterance-mean vectors (what pooled features
keep; the minimum over clips).

    python bench/encoder_precision.py --clips 32
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import glob
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SERKIT_DATA") or ROOT.parent / "shared")


def _batches(files: list[str], batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    from serkit.audio import read_audio

    sigs = sorted((read_audio(f) for f in files), key=len, reverse=True)
    out = []
    for i in range(0, len(sigs), batch):
        part = sigs[i : i + batch]
        lengths = torch.tensor([len(s) for s in part])
        waves = torch.zeros(len(part), int(lengths.max()))
        for j, s in enumerate(part):
            waves[j, : len(s)] = torch.from_numpy(s)
        out.append((waves, lengths))
    return out


def _run(encoder, batches, amp: bool) -> list:
    outs = []
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if amp else contextlib.nullcontext()
    with torch.inference_mode(), ctx:
        for waves, lengths in batches:
            o = encoder(waves, lengths)
            n = o.frame_mask.sum(1)
            outs.append([[h[j, : int(n[j])].float() for h in o.hidden_states] for j in range(len(lengths))])
    return [item for b in outs for item in b]  # per clip: list over layers of (frames, dim)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--glob", default=str(SHARED / "corpora" / "ravdess" / "Actor_*" / "*.flac"))
    ap.add_argument("--encoder", default="openai/whisper-base")
    ap.add_argument("--clips", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-int8", action="store_true")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_CACHE", str(SHARED / "hf-cache"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore")

    import serkit.encoders.whisper as whisper_module
    from serkit.encoders import load_encoder

    files = sorted(glob.glob(args.glob))
    files = files[:: max(1, len(files) // args.clips)][: args.clips]
    batches = _batches(files, args.batch)
    audio = sum(int(n.sum()) for _, n in batches) / 16000
    fp32 = load_encoder(args.encoder)
    variants = {
        "fp32": (fp32, False),
        "bf16 weights (precision: bf16)": (copy.deepcopy(fp32).cast(torch.bfloat16), False),
        "bf16 autocast": (fp32, True),
    }
    if not args.no_int8:
        variants["int8 dynamic (linear layers)"] = (
            torch.ao.quantization.quantize_dynamic(copy.deepcopy(fp32), {torch.nn.Linear}, dtype=torch.qint8), False)
    fused = whisper_module._inference_block

    def stock_block(layer, hidden, mask):
        return layer(hidden, mask)

    best = dict.fromkeys(variants, float("inf"))
    outputs = {}
    for _ in range(args.rounds):
        for name, (enc, amp) in variants.items():
            whisper_module._inference_block = stock_block if name.startswith("int8") else fused
            t0 = time.perf_counter()
            outputs[name] = _run(enc, batches, amp)
            best[name] = min(best[name], time.perf_counter() - t0)
    whisper_module._inference_block = fused

    ref = outputs["fp32"]
    n_layers = len(ref[0])
    print(f"{args.encoder} on {len(files)} clips ({audio:.0f} s of audio) from {args.glob}, batches of {args.batch}, "
          f"best of {args.rounds} rounds; torch {torch.__version__}, threads {torch.get_num_threads()}, CPU "
          f"capability {torch.backends.cpu.get_cpu_capability()}")
    print("| variant | s / round | x fp32 | " + " | ".join(f"rel. err. L{i}" for i in range(n_layers))
          + " | min pooled cosine (top / all layers) |")
    print("|---|---:|---:|" + "---:|" * n_layers + "---:|")
    for name, got in outputs.items():
        errs = []
        for layer in range(n_layers):
            num = sum(float((g[layer] - r[layer]).pow(2).sum()) for g, r in zip(got, ref, strict=True))
            den = sum(float(r[layer].pow(2).sum()) for r in ref)
            errs.append(np.sqrt(num / den))
        cos = np.array([[float(torch.nn.functional.cosine_similarity(g[i].mean(0), r[i].mean(0), dim=0))
                         for i in range(n_layers)] for g, r in zip(got, ref, strict=True)])
        print(f"| {name} | {best[name]:.2f} | {best['fp32'] / best[name]:.2f} | "
              + " | ".join(f"{e:.4f}" for e in errs) + f" | {cos[:, -1].min():.5f} / {cos.min():.5f} |")


if __name__ == "__main__":
    main()
