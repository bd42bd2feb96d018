"""Prediction with a trained model: one interface for a signal, a file, a list of files, a manifest or a long
recording (:class:`~serkit.inference.recognizer.Recognizer`).

Importing this package makes every predictor available to :meth:`Recognizer.from_pretrained`, which picks the
most specific one for a model folder: the torch :class:`Recognizer`, :class:`~serkit.inference.views.
MultiViewRecognizer` for several encoders (IF-MVSE), :class:`~serkit.inference.onnx.OnnxRecognizer` for the
exported graph.
"""

from serkit.inference.onnx import OnnxMultiViewRecognizer, OnnxRecognizer
from serkit.inference.recognizer import Recognizer
from serkit.inference.views import MultiViewRecognizer
from serkit.inference.windows import MIN_ENROLL_SECONDS, resolve_device

__all__ = ["MIN_ENROLL_SECONDS", "MultiViewRecognizer", "OnnxMultiViewRecognizer", "OnnxRecognizer", "Recognizer",
           "resolve_device"]
