"""Numeric precision of encoders and training: ``auto``, ``fp32`` or ``bf16``, resolved once per device.

``auto`` means bf16 where the hardware runs it natively: a CPU with AMX-bf16 or AVX512-bf16 (detected at run time
from ``/proc/cpuinfo`` flags and torch's own CPU checks), or a CUDA GPU that supports bf16; fp32 elsewhere.
``fp32`` is fp32 on every device. What actually ran (the resolved value, never ``auto``) is what stores,
results and trained models record.

Extraction and prediction cast the encoder's weights to bf16 once (:meth:`serkit.encoders.base.Encoder.cast`);
training maps the precision onto Lightning's precision plugins (``bf16-mixed`` / ``32-true``).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from serkit.errors import ConfigError

#: What a config or a command line may ask for.
PRECISIONS = ("auto", "fp32", "bf16")
#: The values ``auto`` resolves to, with their torch dtypes.
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
#: CPU flags (``/proc/cpuinfo``) of native bf16 arithmetic.
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
#: Lightning precision strings for training.
LIGHTNING = {"fp32": "32-true", "bf16": "bf16-mixed"}


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def bf16_supported(device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` runs bf16 natively: AMX-bf16 / AVX512-bf16 on a CPU, bf16 support on a CUDA GPU.

    The one place serkit decides this. On a CPU either the ``/proc/cpuinfo`` flags (Linux) or torch's own checks
    (``torch.cpu._is_avx512_bf16_supported``, ``_is_amx_tile_supported``) suffice.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if dev.type != "cpu":
        return False
    if any(f in _cpu_flags() for f in CPU_BF16_FLAGS):
        return True
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(bool(c()) for c in checks if c is not None)


def check_precision(precision: str, key: str = "precision") -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a :class:`ConfigError` naming ``key``."""
    if precision not in PRECISIONS:
        raise ConfigError(f"{key}={precision!r} is not one of {PRECISIONS}")
    return precision


def resolve_precision(precision: str, device: str | torch.device = "cpu") -> str:
    """``"fp32"`` or ``"bf16"``: what ``precision`` (auto / fp32 / bf16) means on ``device``.

    An explicit ``bf16`` is honoured on any device (emulated, slowly, where the hardware lacks it).
    """
    check_precision(precision)
    if precision == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    return precision


def torch_dtype(precision: str) -> torch.dtype:
    """The weight dtype of a resolved precision (``fp32`` / ``bf16``)."""
    if precision not in DTYPES:
        raise ValueError(f"precision must be resolved to one of {list(DTYPES)}, got {precision!r}")
    return DTYPES[precision]


def lightning_precision(precision: str, accelerator: str = "auto") -> str:
    """Lightning's precision string for ``train.precision``: ``bf16`` -> ``bf16-mixed``, ``fp32`` -> ``32-true``,
    ``auto`` -> ``bf16-mixed`` where the training device supports bf16 (see :func:`bf16_supported`).

    Lightning's own strings (``"16-mixed"``, ``"bf16-true"``, ...) pass through unchanged.
    """
    if precision not in PRECISIONS:
        return str(precision)
    device = "cuda" if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available() else "cpu"
    return LIGHTNING[resolve_precision(precision, device)]


def precision_of(module: torch.nn.Module) -> str:
    """``"bf16"`` when the module's floating-point weights are bf16, else ``"fp32"``."""
    for p in module.parameters():
        if p.is_floating_point():
            return "bf16" if p.dtype == torch.bfloat16 else "fp32"
    return "fp32"


def store_suffix(precision: str) -> str:
    """Suffix of a feature store folder name: none for fp32 (the folders made before precisions existed), else
    ``-bf16``."""
    return "" if precision == "fp32" else f"-{precision}"


def run_precision(cfg: dict, source=None) -> dict:
    """What an experiment runs in (resolved, never ``auto``): ``{"features": fp32 | bf16, "train": Lightning
    precision}``. ``features`` is the feature store's precision (``source``), or with the encoder in the training
    loop (``features.source: waveform``, ``source`` None) the training precision's."""
    train = lightning_precision(cfg["train"]["precision"], cfg["train"]["accelerator"])
    if source is not None:
        features = getattr(source, "precision", "fp32")
    else:
        features = "bf16" if train.startswith("bf16") else "fp32"
    return {"features": features, "train": train}
