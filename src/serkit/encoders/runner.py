"""Batched inference: length bucketing under a samples budget, long inputs in overlapping chunks, stitching.

Items arrive as ``(key, signal)`` with ``signal`` float32 ``(samples,)`` at 16 kHz, ideally sorted by length
(longest first: the first batch shows the peak memory). Consecutive pieces form a batch while
``batch_size * longest_piece <= max_batch_samples``; encoders that are not padding-invariant (group-norm CNN front
ends) batch only pieces of exactly equal length. Inputs longer than ``chunk_samples`` are cut into chunks that
overlap by ``overlap_samples``, start on the encoder's frame grid (multiples of ``hop_samples``) and are joined
at the middle of each overlap, so a stitched item has exactly the frames of an unchunked run. Whisper's inference
path gives every item of a padded batch bit for bit what it gives alone (:mod:`serkit.encoders.whisper`), so a
clip's cached features do not depend on which other clips a run extracted with it (a resumed or partly cached
extraction batches differently).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from serkit.constants import SAMPLE_RATE
from serkit.encoders.base import Encoder


def plan_chunks(
    num_samples: int, chunk_samples: int | None, overlap_samples: int, hop: int
) -> list[tuple[int, int]]:
    """Split ``num_samples`` into ``(start, length)`` chunks of at most ``chunk_samples``.

    Starts are multiples of ``hop``; consecutive chunks overlap by about ``overlap_samples``. One chunk when the
    input fits (or ``chunk_samples`` is None).
    """
    if chunk_samples is None or num_samples <= chunk_samples:
        return [(0, num_samples)]
    step = (chunk_samples - overlap_samples) // hop * hop
    if step <= 0:
        raise ValueError(
            f"chunk of {chunk_samples} samples leaves no step after an overlap of {overlap_samples}"
        )
    spans = []
    start = 0
    while True:
        length = min(chunk_samples, num_samples - start)
        spans.append((start, length))
        if start + length >= num_samples:
            return spans
        start += step


def stitch(chunks: Sequence[torch.Tensor], start_frames: Sequence[int]) -> torch.Tensor:
    """Join chunk outputs ``(layers, frames_i, dim)`` that start at ``start_frames`` of the whole item.

    Overlaps are cut in their middle; returns ``(layers, frames, dim)``.
    """
    if len(chunks) == 1:
        return chunks[0]
    pieces = []
    begin = 0  # first frame (of the item) not yet emitted
    for i, (chunk, s) in enumerate(zip(chunks, start_frames, strict=True)):
        end_i = s + chunk.shape[1]
        if i + 1 < len(chunks):
            end = (start_frames[i + 1] + end_i) // 2
        else:
            end = end_i
        pieces.append(chunk[:, begin - s : end - s])
        begin = end
    return torch.cat(pieces, dim=1)


@dataclass
class _Pending:
    n_chunks: int
    start_frames: list[int]
    outputs: dict[int, torch.Tensor] = field(default_factory=dict)


def encode_signals(
    encoder: Encoder,
    items: Iterable[tuple[object, np.ndarray]],
    layers: Sequence[int],
    *,
    batch_seconds: float = 60.0,
    chunk_seconds: float | None = 30.0,
    overlap_seconds: float = 1.0,
    max_batch_size: int = 64,
) -> Iterator[tuple[object, torch.Tensor]]:
    """Encode signals in batches; yield ``(key, features)`` with float32 CPU features ``(len(layers), frames, dim)``.

    Args:
        encoder: any :class:`Encoder`, already on its device and in its precision (weights cast with
            :meth:`Encoder.cast`: the hidden states come out in that dtype and are returned as float32).
        items: ``(key, signal)`` pairs, signal float32 ``(samples,)`` at 16 kHz; sort by length for good batches.
        layers: hidden-state indices to keep (non-negative).
        batch_seconds: padded audio per batch (``batch_size * longest``), in seconds.
        chunk_seconds: longest piece per forward; longer inputs are chunked (capped by ``encoder.max_samples``).
        overlap_seconds: overlap between chunks.
        max_batch_size: cap on pieces per batch.
    Yields in completion order (an item is yielded once all its chunks are done).
    """
    first = next(itertools.chain(encoder.parameters(), encoder.buffers()), None)
    device = first.device if first is not None else torch.device("cpu")
    hop = encoder.hop_samples
    chunk = None if chunk_seconds is None else int(chunk_seconds * SAMPLE_RATE) // hop * hop
    if encoder.max_samples is not None:
        chunk = encoder.max_samples if chunk is None else min(chunk, encoder.max_samples)
    overlap = int(overlap_seconds * SAMPLE_RATE) // hop * hop
    budget = int(batch_seconds * SAMPLE_RATE)
    layers = list(layers)

    pending: dict[object, _Pending] = {}
    batch: list[tuple[object, int, np.ndarray]] = []
    batch_cost = 0

    def run(batch):
        lengths = torch.tensor([len(w) for _, _, w in batch], dtype=torch.long)
        waves = torch.zeros(len(batch), int(lengths.max()))
        for j, (_, _, w) in enumerate(batch):
            waves[j, : len(w)] = torch.from_numpy(w)
        waves, lengths_d = waves.to(device), lengths.to(device)
        with torch.inference_mode():
            out = encoder(waves, lengths_d)
            kept = [out.hidden_states[i] for i in layers]  # L x (B, F, D)
            frames = out.frame_mask.sum(dim=1).cpu()
            # one copy per item, straight into (L, frames_j, D) (no (B, L, F, D) stack and slice copy)
            items = [torch.stack([h[j, : int(frames[j])] for h in kept]).float().cpu() for j in range(len(batch))]
        done = []
        for j, (key, idx, _) in enumerate(batch):
            p = pending[key]
            p.outputs[idx] = items[j]
            if len(p.outputs) == p.n_chunks:
                done.append(key)
        for key in done:
            p = pending.pop(key)
            yield key, stitch([p.outputs[i] for i in range(p.n_chunks)], p.start_frames)

    for key, signal in items:
        if key in pending:
            raise ValueError(f"duplicate key {key!r} in items")
        signal = np.asarray(signal, dtype=np.float32)
        spans = plan_chunks(len(signal), chunk, overlap, hop)
        pending[key] = _Pending(len(spans), [s // hop for s, _ in spans])
        for idx, (s, n) in enumerate(spans):
            cost = encoder.input_samples(n)
            fits = not batch or (
                (len(batch) + 1) * max(batch_cost, cost) <= budget
                and len(batch) < max_batch_size
                and (encoder.padding_invariant or len(batch[0][2]) == n)
            )
            if not fits:
                yield from run(batch)
                batch, batch_cost = [], 0
            batch.append((key, idx, signal[s : s + n]))
            batch_cost = max(batch_cost, cost)
    if batch:
        yield from run(batch)
