"""Layer choice between an encoder and a downstream model (the s3prl "featurizer").

Layer specs (strings, as in configs and on the command line):
    ``"-1"``          the top layer; negative indices count from the top (``"-3"``: third to last)
    ``"3"``           hidden state 3 (0 = the input embedding layer)
    ``"0,2,4"``       several layers, concatenated along the feature axis (or stacked, ``reduce="stack"``)
    ``"2:5"``         a range, Python-style (layers 2, 3, 4)
    ``"all"``         every hidden state (concatenated or stacked)
    ``"weighted"``    a learned softmax-weighted sum of every hidden state (``"weighted:0,2,4"`` for a subset)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from serkit.errors import ConfigError

REDUCTIONS = ("concat", "stack", "weighted")


def parse_layers(spec: str | int | Sequence[int], num_layers: int) -> tuple[list[int], bool]:
    """Resolve a layer spec against ``num_layers`` hidden states.

    Returns ``(indices, weighted)``: non-negative indices in the order given, and whether the spec asks for a
    learned weighted sum. Raises :class:`ConfigError` naming the spec for bad or out-of-range layers.
    """
    weighted = False
    if isinstance(spec, int):
        items: list = [spec]
    elif isinstance(spec, str):
        s = spec.strip().lower()
        if s.startswith("weighted"):
            weighted = True
            s = s[len("weighted") :].lstrip(":") or "all"
        if s == "all":
            items = list(range(num_layers))
        else:
            items = []
            for part in s.split(","):
                part = part.strip()
                if not part:
                    raise ConfigError(f"layers spec {spec!r}: empty item")
                try:
                    if ":" in part:
                        a, b = part.split(":", 1)
                        items.extend(range(num_layers)[slice(int(a) if a else None, int(b) if b else None)])
                    else:
                        items.append(int(part))
                except ValueError:
                    raise ConfigError(
                        f"layers spec {spec!r}: {part!r} is not an integer, a range a:b, 'all' or 'weighted'"
                    ) from None
    else:
        items = [int(i) for i in spec]
    if not items:
        raise ConfigError(f"layers spec {spec!r} selects no layer of {num_layers}")
    out = []
    for i in items:
        if not -num_layers <= i < num_layers:
            raise ConfigError(
                f"layers spec {spec!r}: layer {i} out of range for {num_layers} hidden states "
                f"(0..{num_layers - 1} or -{num_layers}..-1)"
            )
        out.append(i % num_layers)
    return out, weighted


def _as_float(x: torch.Tensor) -> torch.Tensor:
    """Cached features arrive as float16; compute in float32 (or the autocast dtype) after choosing layers."""
    return x.float() if x.dtype == torch.float16 and not torch.is_autocast_enabled() else x


class Featurizer(nn.Module):
    """Pick, concatenate, stack or weight hidden states.

    Args:
        num_layers: hidden states the upstream provides (``encoder.num_layers``, or the layers in a cache).
        hidden_size: their feature dimension.
        layers: a layer spec (module docstring) or list of indices.
        reduce: for several layers: ``"concat"`` -> ``(batch, frames, k*dim)``, ``"stack"`` ->
            ``(batch, k, frames, dim)``, ``"weighted"`` -> ``(batch, frames, dim)``. A ``"weighted..."`` spec sets
            ``"weighted"``. One layer always gives ``(batch, frames, dim)``.
        normalize: layer-normalise each hidden state (no affine) before combining (s3prl does for weighted sums).

    ``forward`` takes a sequence of ``(batch, frames, dim)`` tensors (``EncoderOutput.hidden_states``) or one
    tensor ``(batch, layers, frames, dim)`` (as a feature cache returns).
    """

    def __init__(
        self,
        num_layers: int,
        hidden_size: int,
        layers: str | int | Sequence[int] = "-1",
        reduce: str = "concat",
        normalize: bool = False,
    ):
        super().__init__()
        self.indices, weighted = parse_layers(layers, num_layers)
        if weighted:
            reduce = "weighted"
        if reduce not in REDUCTIONS:
            raise ConfigError(f"Featurizer reduce must be one of {REDUCTIONS}, got {reduce!r}")
        self.num_layers, self.hidden_size = num_layers, hidden_size
        self.reduce = reduce if len(self.indices) > 1 or reduce == "weighted" else "single"
        self.normalize = normalize
        if self.reduce == "weighted":
            self.weights = nn.Parameter(torch.zeros(len(self.indices)))
        if self.reduce == "concat":
            self.output_size = hidden_size * len(self.indices)
        else:
            self.output_size = hidden_size

    def layer_weights(self) -> torch.Tensor | None:
        """Softmax weights ``(k,)`` of a weighted featurizer, else None."""
        return torch.softmax(self.weights, dim=0) if self.reduce == "weighted" else None

    def forward(self, hidden_states: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        if isinstance(hidden_states, torch.Tensor):
            if hidden_states.ndim != 4:
                raise ValueError(f"expected (batch, layers, frames, dim), got {tuple(hidden_states.shape)}")
            available = hidden_states.shape[1]
            get = lambda i: _as_float(hidden_states[:, i])
        else:
            available = len(hidden_states)
            get = lambda i: hidden_states[i]
        if available != self.num_layers:
            raise ValueError(f"Featurizer built for {self.num_layers} hidden states, got {available}")
        chosen = [get(i) for i in self.indices]
        if self.normalize:
            chosen = [F.layer_norm(h, h.shape[-1:]) for h in chosen]
        if self.reduce == "single":
            return chosen[0]
        if self.reduce == "concat":
            return torch.cat(chosen, dim=-1)
        if self.reduce == "stack":
            return torch.stack(chosen, dim=1)  # (batch, k, frames, dim)
        # weighted sum, accumulated layer by layer (no (batch, k, frames, dim) copy: memory-bound on CPU)
        w = torch.softmax(self.weights, dim=0).to(chosen[0].dtype)
        out = chosen[0] * w[0]
        for i in range(1, len(chosen)):
            out = out + chosen[i] * w[i]
        return out

    def extra_repr(self) -> str:
        return f"layers={self.indices}, reduce={self.reduce}, normalize={self.normalize}"
