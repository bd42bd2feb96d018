"""The exported graph run by onnxruntime behind the :class:`serkit.Recognizer` API.

``OnnxRecognizer.from_folder(MODEL)`` opens ``MODEL/model.onnx`` (written by ``serkit export MODEL --format onnx``,
see :mod:`serkit.export`); windows, enrolment and the result dicts are the Recognizer's own, only the scores and
the pooled statistics of each window come from the graph. Neither the encoder nor the heads are loaded in torch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from serkit.constants import SAMPLE_RATE
from serkit.errors import SerkitError
from serkit.inference import MIN_ENROLL_SECONDS, Recognizer


class OnnxRecognizer(Recognizer):
    """A :class:`Recognizer` whose windows are scored by an onnxruntime session on the exported graph.

    ``meta``: the graph's description (metadata :data:`serkit.export.METADATA_KEY`: heads, inputs, outputs,
    classes, sample limits).
    """

    backend = "onnx"

    def __init__(self, session, meta: dict, cfg: dict, labels, encoder_info: dict, device: str = "cpu"):
        # the Recognizer's configuration, without a torch model
        self.model, self.cfg, self.labels, self.encoder_info, self.device = None, cfg, labels, encoder_info, device
        self.precision, self._encoder = "fp32", None
        p = cfg.get("predict", {})
        self.window = float(p.get("window_seconds", 10.0))
        self.hop = float(p.get("hop_seconds", 5.0))
        self.normalize = cfg.get("features", {}).get("normalize", "none")
        self.session, self.meta = session, meta
        self.inputs = [i.name for i in session.get_inputs()]
        self.outputs = [o.name for o in session.get_outputs()]
        self.head_names = list(meta["heads"])
        shape = session.get_inputs()[self.inputs.index("speaker_mean")].shape if "speaker_mean" in self.inputs else None
        self._stats_shape = tuple(shape) if shape else None

    @classmethod
    def from_folder(cls, model_dir: str | Path, device: str = "cpu", path: str | Path | None = None,
                    threads: int | None = None) -> OnnxRecognizer:
        """Open ``path`` (default ``model_dir/model.onnx``) with onnxruntime: on CUDA when ``device`` is cuda and
        this onnxruntime has it; ``threads``: intra-op threads (default onnxruntime's: all cores)."""
        try:
            import onnxruntime as ort
        except ImportError:
            raise SerkitError("the onnx backend needs onnxruntime: pip install 'serkit[export]'") from None
        import yaml

        from serkit.data.labels import LabelMap
        from serkit.export import METADATA_KEY, ONNX_FILE

        d = Path(model_dir)
        for name in ("config.yaml", "labels.json", "encoder.json"):
            if not (d / name).exists():
                raise SerkitError(f"{d}: not a serkit model folder (missing {name}); make one with `serkit train`")
        path = Path(path) if path is not None else d / ONNX_FILE
        if not path.exists():
            raise SerkitError(f"{path}: no exported graph; make it with `serkit export {d} --format onnx`")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        providers = ["CPUExecutionProvider"]
        if str(device).startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise SerkitError(f"device {device!r}: this onnxruntime has no CUDA provider (it has "
                                  f"{', '.join(ort.get_available_providers())})")
            providers.insert(0, "CUDAExecutionProvider")
        session = ort.InferenceSession(str(path), options, providers=providers)
        props = session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in props:
            raise SerkitError(f"{path}: not a graph written by `serkit export` (no {METADATA_KEY!r} metadata)")
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        labels = LabelMap.from_dict(json.loads((d / "labels.json").read_text()))
        enc = json.loads((d / "encoder.json").read_text())
        return cls(session, json.loads(props[METADATA_KEY]), cfg, labels, enc, str(device))

    @property
    def encoder(self):
        raise SerkitError("the onnx backend has no torch encoder; use backend='torch' for features")

    def run_window(self, signal: np.ndarray, own: tuple[int, int] | None = None, stats=None) -> dict[str, np.ndarray]:
        """The graph's outputs by name for one window (16 kHz float32 ``(samples,)``): ``scores_<head>``,
        ``pooled`` and ``frames`` of the samples ``own`` (default all). ``stats``: the speaker's ``(mean, std)``
        for the speaker head (default: placeholders, when its scores are not wanted)."""
        n, low = len(signal), int(self.meta["min_samples"])
        if n < low:
            raise SerkitError(f"a window of {n} samples ({n / SAMPLE_RATE:.3f} s) is shorter than the exported "
                              f"graph's minimum of {low} ({low / SAMPLE_RATE:.2f} s)")
        feed = {"waveform": np.ascontiguousarray(signal, dtype=np.float32)[None],
                "own": np.array(own if own is not None else (0, n), dtype=np.int64)}
        if self._stats_shape is not None:
            if stats is None:
                stats = np.zeros(self._stats_shape, np.float32), np.ones(self._stats_shape, np.float32)
            feed["speaker_mean"] = np.asarray(stats[0], dtype=np.float32)
            feed["speaker_std"] = np.asarray(stats[1], dtype=np.float32)
        return dict(zip(self.outputs, self.session.run(self.outputs, feed), strict=True))

    def _head(self, stats) -> str:
        if stats is not None and "speaker" in self.head_names:
            return "speaker"
        if "global" in self.head_names:
            return "global"
        return self.head_names[0]

    def _score(self, signal: np.ndarray, stats=None) -> np.ndarray:
        return self.run_window(signal, stats=stats)[f"scores_{self._head(stats)}"]

    def speaker_statistics(self, signals: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`Recognizer.speaker_statistics`, from the graph's pooled statistics."""
        from serkit.data.normalize import frame_stats

        seconds = sum(len(x) for x in signals) / SAMPLE_RATE
        if seconds < MIN_ENROLL_SECONDS:
            raise SerkitError(
                f"this model normalises features per speaker (features.normalize: speaker) and needs at least "
                f"{MIN_ENROLL_SECONDS:.0f} s of the speaker's audio to estimate them, got {seconds:.1f} s")
        outs = [self.run_window(x) for x in signals]
        return frame_stats(np.stack([o["pooled"] for o in outs]), [int(o["frames"]) for o in outs])
