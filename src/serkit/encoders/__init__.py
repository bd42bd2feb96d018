"""Speech encoders behind one interface, and the featurizer that picks their layers.

``load_encoder(name, mode=...)`` -> :class:`Encoder` (an ``nn.Module``): ``encoder(waves, lengths)`` ->
:class:`EncoderOutput` with all hidden states ``(batch, frames, dim)`` and a frame mask.
"""

from serkit.encoders.base import MODES, Encoder, EncoderOutput
from serkit.encoders.featurizer import Featurizer, parse_layers
from serkit.encoders.registry import ALIASES, list_encoders, load_encoder, resolve_encoder_id
from serkit.encoders.runner import encode_signals

__all__ = [
    "ALIASES",
    "MODES",
    "Encoder",
    "EncoderOutput",
    "Featurizer",
    "encode_signals",
    "list_encoders",
    "load_encoder",
    "parse_layers",
    "resolve_encoder_id",
]
