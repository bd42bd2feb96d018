"""Waveform augmentation applied before the encoder (mixup variants)."""

from serkit.augment.mixup import (
    EnergyAdaptiveMixup,
    LabelAdaptiveMixup,
    MixupResult,
    WaveformMixup,
    energy_adaptive_mix,
    label_adaptive_mix,
    mix_labels,
    segment_energy,
    to_soft_labels,
)

__all__ = [
    "EnergyAdaptiveMixup",
    "LabelAdaptiveMixup",
    "MixupResult",
    "WaveformMixup",
    "energy_adaptive_mix",
    "label_adaptive_mix",
    "mix_labels",
    "segment_energy",
    "to_soft_labels",
]
