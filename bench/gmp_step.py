"""Time GMP-ATL's stage-2 and stage-3 training steps on the CPU path (top block from the cache), before and after
the frozen layers' statistics came from the cache and stage 2's heads ran on the masked frames only.

Usage::

    python bench/gmp_step.py [--encoder openai/whisper-base] [--batch 32] [--frames 185] [--steps 6] [--random-init]

One step = forward, loss, backward and Adam on one batch of ``--batch`` utterances whose lengths are drawn around
``--frames`` (RAVDESS's whisper-base mean is 185 frames, 147-264), in bf16 autocast, the model in training mode.
Rows, seconds per step (median):

* stage 3 (stats head, AM-softmax): every hidden state's frames in the batch (before) against the blocks' input
  frames plus the cache's pooled statistics of the frozen layers (after);
* stage 2 (pseudo-label heads at 64 / 512 / 4096, span masking): heads on every frame (``masked_only=False``: what
  the model computed before) against the masked real frames only;
* stage 3 again with PyTorch's fused Adam (``train.fused_optimizer: true``) instead of the per-tensor update;
* padding: the batch padded to its longest item, shuffled (random lengths) against sorted groups of 8 batches
  (``train.group_by_length: 8``), as padded frames per real frame over an epoch of the given length distribution.

``--random-init`` builds the encoder from its config with random weights (speed does not depend on the weights).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def _batch(rng, layers: int, dim: int, batch: int, frames: int, ks) -> dict:
    from serkit.data.features import collate

    lens = np.clip(rng.normal(frames, 0.1 * frames, batch).astype(int), 16, None)
    t = int(lens.max())
    items = [{"features": rng.standard_normal((layers, int(n), dim)).astype(np.float16),
              "emotion": int(rng.integers(8)),
              "speaker_mean": np.zeros((layers, dim), np.float32), "speaker_std": np.ones((layers, dim), np.float32),
              "pooled": rng.standard_normal((layers, 2 * dim)).astype(np.float32),
              "pseudo": np.stack([rng.integers(0, k, t) for k in ks])} for n in lens]
    return collate(items)


def _time_step(model, batch, loss_fn, steps: int, fused: bool = False) -> float:
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], 1e-4,
                           **({"fused": True} if fused else {}))
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(batch)
            loss = loss_fn(out, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:  # the first step warms up
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder", default="openai/whisper-base")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--frames", type=int, default=185)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--random-init", action="store_true")
    args = ap.parse_args(argv)

    from serkit.encoders import load_encoder
    from serkit.losses.pseudo_label import PseudoLabelCE
    from serkit.models.gmp_atl import GMPStageModel
    from serkit.models.staged_encoder import StagedEncoder

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    config = None
    if args.random_init:
        import transformers

        config = transformers.AutoConfig.from_pretrained(args.encoder)
    enc = load_encoder(args.encoder, mode="native", eval_mode=True, config=config)
    layers, dim, ks = enc.num_layers, enc.hidden_size, (64, 512, 4096)
    full = _batch(rng, layers, dim, args.batch, args.frames, ks)
    first = layers - 2
    lean = {**full, "features": full["features"][:, first:first + 1].contiguous()}
    del full["pooled"]
    ce = torch.nn.CrossEntropyLoss()
    rows = []
    s3 = GMPStageModel(StagedEncoder(enc, "cache", "top:1"), 3, 8, layers="all", head="stats", proj_dim=128).train()
    def loss3(o, b):
        return ce(o["logits"].float(), b["emotion"])

    for name, b in (("every layer's frames", full), ("blocks' input + pooled statistics", lean)):
        rows.append(("stage 3", name, _time_step(s3, b, loss3, args.steps)))
    fused3 = _time_step(s3, lean, loss3, args.steps, fused=True)
    for masked in (False, True):
        s2 = GMPStageModel(StagedEncoder(enc, "cache", "top:1"), 2, 8, layers="all", ks=ks, hidden=256,
                           masked_only=masked).train()
        b = lean if masked else full
        rows.append(("stage 2", "heads on masked frames, pooled statistics" if masked else "heads on every frame",
                     _time_step(s2, b, PseudoLabelCE(), args.steps)))
    print(f"| stage | input | s / step (batch {args.batch}, ~{args.frames} frames, "
          f"{torch.get_num_threads()} threads) |")
    print("|---|---|---|")
    for stage, name, s in rows:
        print(f"| {stage} | {name} | {s:.3f} |")
    print(f"| stage 3 | blocks' input + pooled statistics, fused Adam (train.fused_optimizer) | {fused3:.3f} |")
    for stage in ("stage 3", "stage 2"):
        a, b = [s for st, _, s in rows if st == stage]
        print(f"{stage}: {a / b:.2f}x faster per step")
    print(f"stage 3 with fused Adam: {rows[0][2] / fused3:.2f}x faster per step than before")

    from serkit.data.samplers import LengthGroupedBatchSampler, SeededShuffleSampler

    lengths = np.clip(rng.normal(args.frames, 0.1 * args.frames, 1080).astype(int), 16, None)
    for name, batches in (("shuffled", [list(SeededShuffleSampler(len(lengths), 0))[i:i + args.batch]
                                        for i in range(0, len(lengths), args.batch)]),
                          ("length-grouped (groups of 8)", list(LengthGroupedBatchSampler(lengths, args.batch, 8)))):
        padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
        print(f"padding, {name}: {padded / sum(lengths[i] for b in batches for i in b):.3f} "
              "frames computed per real frame")


if __name__ == "__main__":
    main()
