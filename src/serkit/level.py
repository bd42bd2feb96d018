"""Input level normalisation: every signal scaled to one active-speech level before the encoder.

A recording's level says more about the microphone, its gain and the distance to it than about the speaker: the
shared corpora differ by about 25 dB (EmoDB's files are normalised near full scale, RAVDESS's are not), and Whisper's
log-mel front end passes the absolute level on to every hidden state, so a head trained on one corpus reads the
other's level as arousal. ``encoder.level_db: -23`` scales each signal the encoder sees (a clip, a prediction
window, or one piece of a long file the encoder takes in chunks) so that its active frames have that RMS level in
dBFS; the clip's own samples are all that is used (a single-clip operation). The level differences *within* a clip
(loud and soft syllables) stay.

Active frames: 25 ms frames whose RMS is within :data:`ACTIVE_RANGE_DB` of the clip's loudest frame. The gain is
capped so that the peak stays below :data:`MAX_PEAK` (no clipping); a silent signal is left as it is.
"""

from __future__ import annotations

import torch

from serkit.constants import SAMPLE_RATE

__all__ = ["ACTIVE_RANGE_DB", "FRAME_SAMPLES", "LEVEL_RANGE", "MAX_PEAK", "scale_to_level"]

#: frames this far (dB) below the loudest frame of a clip do not count for its level
ACTIVE_RANGE_DB = 35.0
#: 25 ms at 16 kHz
FRAME_SAMPLES = SAMPLE_RATE // 40
#: the largest absolute sample value after scaling
MAX_PEAK = 0.99
#: the levels (dBFS) ``encoder.level_db`` accepts
LEVEL_RANGE = (-60.0, -3.0)


def scale_to_level(waves: torch.Tensor, lengths: torch.Tensor, level_db: float) -> torch.Tensor:
    """``waves`` ``(batch, samples)`` (zero-padded; ``lengths`` ``(batch,)`` real samples) each scaled so that its
    active frames' RMS is ``level_db`` dBFS (the gain capped at a peak of :data:`MAX_PEAK`); float32, same shape."""
    x = waves.float()
    b, n = x.shape
    pad = (-n) % FRAME_SAMPLES
    framed = torch.nn.functional.pad(x, (0, pad)).reshape(b, -1, FRAME_SAMPLES)
    power = framed.pow(2).mean(dim=-1)                                                  # (batch, frames)
    starts = torch.arange(power.shape[1], device=x.device) * FRAME_SAMPLES
    real = starts[None, :] < lengths[:, None]
    power = torch.where(real, power, torch.zeros_like(power))
    loudest = power.amax(dim=1, keepdim=True)
    active = real & (power >= loudest * 10.0 ** (-ACTIVE_RANGE_DB / 10.0)) & (loudest > 0)
    count = active.sum(dim=1).clamp(min=1)
    level = (power * active).sum(dim=1) / count                                          # mean active power
    gain = torch.sqrt(10.0 ** (float(level_db) / 10.0) / level.clamp(min=1e-20))
    peak = x.abs().amax(dim=1)
    gain = torch.minimum(gain, MAX_PEAK / peak.clamp(min=1e-20))
    gain = torch.where(loudest[:, 0] > 0, gain, torch.ones_like(gain))
    return x * gain[:, None]
