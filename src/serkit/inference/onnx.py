"""``Recognizer.from_pretrained(MODEL, backend="onnx")``: the exported graph run by onnxruntime, same API.

The graph (``MODEL/model.onnx`` from ``serkit export MODEL --format onnx``, see :mod:`serkit.export`) scores one
window and gives the pooled statistics of the frames the window owns. Windows, heads, enrolment, segments and
the result dicts are the :class:`serkit.Recognizer`'s own: only its two seams change, :meth:`_encode` (one graph
run per window: the global head's scores and the owned statistics) and :meth:`_score`. A speaker-normalised head
needs the speaker's statistics as an input, so its windows run a second time once those are known. Neither the
encoder nor the heads are loaded in torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serkit.constants import SAMPLE_RATE
from serkit.errors import SerkitError
from serkit.inference.recognizer import Recognizer
from serkit.model_folder import METADATA_KEY, ONNX_FILE, ModelFolder, model_folder_part


@dataclass
class _Window:
    """One window for the graph: its signal and, when the graph has a global head, that head's scores."""

    signal: np.ndarray
    global_scores: np.ndarray | None


class OnnxRecognizer(Recognizer):
    """A :class:`Recognizer` whose windows go through an onnxruntime session on the exported graph.

    ``meta``: the graph's description (metadata :data:`serkit.export.METADATA_KEY`: heads, inputs, outputs,
    classes, sample limits). ``heads`` holds the graph's head names (no torch modules).
    """

    backend = "onnx"

    def __init__(self, session, meta: dict, cfg: dict, labels, encoder_info: dict, model_dir: Path | None = None):
        super().__init__({}, cfg, labels, encoder_info, "cpu", model_dir=model_dir, precision="fp32")
        self.session, self.meta = session, meta
        self.heads = dict.fromkeys(meta["heads"])
        self.inputs = [i.name for i in session.get_inputs()]
        self.outputs = [o.name for o in session.get_outputs()]
        #: the speaker-statistics inputs (``speaker_mean[_<view>]`` / ``speaker_std[_<view>]``) and their shapes
        self._stats_shapes = {i.name: tuple(i.shape) for i in session.get_inputs() if i.name.startswith("speaker_")}

    @classmethod
    def loads(cls, model_dir: Path, backend: str) -> bool:
        """Any model folder on the ``onnx`` backend (the graph itself is checked when it opens)."""
        return backend == "onnx"

    @classmethod
    def from_folder(cls, model_dir: str | Path, device: str = "cpu", batch_size: int = 16,
                    precision: str | None = None, path: str | Path | None = None,
                    threads: int | None = None) -> OnnxRecognizer:
        """Open ``path`` (default ``model_dir/model.onnx``) with onnxruntime: on CUDA when ``device`` is cuda and
        this onnxruntime has it (``auto``: the CPU); ``threads``: intra-op threads (default onnxruntime's: all
        cores). The graph runs in float32: ``batch_size`` and ``precision`` are the torch predictor's."""
        try:
            import onnxruntime as ort
        except ImportError:
            raise SerkitError("the onnx backend needs onnxruntime: pip install 'serkit[export]'") from None

        device = "cpu" if str(device) == "auto" else str(device)
        d = Path(model_dir)
        folder = ModelFolder.read(d, required=("config.yaml", "labels.json", "encoder.json"))
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
        with model_folder_part(d, path.name):
            try:
                session = ort.InferenceSession(str(path), options, providers=providers)
            except Exception as exc:  # onnxruntime's own errors (InvalidProtobuf, Fail, ...) derive from Exception
                if not type(exc).__module__.startswith("onnxruntime"):
                    raise
                why = " ".join(str(exc).split())[:300]
                raise SerkitError(f"{path}: onnxruntime cannot load this graph ({type(exc).__name__}: {why})"
                                  ) from None
            props = session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in props:
            raise SerkitError(f"{path}: not a graph written by `serkit export` (no {METADATA_KEY!r} metadata)")
        rec = cls(session, json.loads(props[METADATA_KEY]), folder.cfg, folder.labels, folder.encoder, model_dir=d)
        # the abstain thresholds (the graph applies the temperatures itself)
        rec.calibration = {h: c for h, c in folder.calibration.items() if h in rec.heads}
        return rec

    @property
    def encoder(self):
        raise SerkitError("the onnx backend has no torch encoder (use backend='torch' for features)")

    def run_window(self, signal: np.ndarray, own: tuple[int, int] | None = None, stats=None) -> dict[str, np.ndarray]:
        """The graph's outputs by name for one window (16 kHz float32 ``(samples,)``): ``scores_<head>``,
        ``pooled`` and ``frames`` of the samples ``own`` (default all). ``stats``: the speaker's ``(mean, std)``
        for the speaker head (default: placeholders, when its scores are not wanted)."""
        n, low, high = len(signal), int(self.meta["min_samples"]), self.meta.get("max_samples")
        if n < low:
            raise SerkitError(f"a window of {n / SAMPLE_RATE:.3f} s is shorter than the exported graph's minimum "
                              f"of {low / SAMPLE_RATE:.2f} s")
        if high is not None and n > high:
            raise SerkitError(f"a window of {n / SAMPLE_RATE:.1f} s is longer than the exported graph's maximum "
                              f"of {high / SAMPLE_RATE:.0f} s")
        feed = {"waveform": np.ascontiguousarray(signal, dtype=np.float32)[None],
                "own": np.array(own if own is not None else (0, n), dtype=np.int64)}
        for name, shape in self._stats_shapes.items():
            kind, _, view = name[len("speaker_"):].partition("_")  # mean / std, and the view of a multi-view graph
            if stats is None:  # placeholders: the speaker head's scores are not wanted from this run
                feed[name] = np.zeros(shape, np.float32) if kind == "mean" else np.ones(shape, np.float32)
            else:
                pair = stats[view] if view else stats
                feed[name] = np.asarray(pair[0] if kind == "mean" else pair[1], dtype=np.float32)
        return dict(zip(self.outputs, self.session.run(self.outputs, feed), strict=True))

    def _encode(self, pieces):
        """As :meth:`Recognizer._encode`; the head input is a :class:`_Window`. A piece longer than the graph
        takes (enrolment files over Whisper's 30 s) contributes its statistics in graph-sized parts, unscored."""
        high = self.meta.get("max_samples")
        for key, signal, own in pieces:
            if high is not None and len(signal) > high:
                parts = [self.run_window(signal[s:s + high]) for s in range(0, len(signal), high)
                         if len(signal) - s >= int(self.meta["min_samples"])]
                yield key, _Window(signal, None), _combine_owned(parts)
                continue
            out = self.run_window(signal, own)
            frames = int(out["frames"])
            yield (key, _Window(signal, out.get("scores_global")),
                   (out["pooled"], frames) if frames else None)

    def _score(self, head: str, inputs, stats) -> np.ndarray:
        """Scores ``(len(inputs), outputs)`` of ``head`` for windows from :meth:`_encode`."""
        if not inputs:
            return np.zeros((0, self.labels.num_outputs), dtype=np.float32)
        if head == "global" and any(w.global_scores is None for w in inputs):
            raise SerkitError(f"a window longer than the exported graph's maximum of "
                              f"{self.meta['max_samples'] / SAMPLE_RATE:.0f} s cannot be scored")
        if head == "global":
            return np.stack([w.global_scores for w in inputs])
        return np.stack([self.run_window(w.signal, stats=stats)["scores_speaker"] for w in inputs])


def _combine_owned(parts: list[dict]) -> tuple[np.ndarray, int] | None:
    """One ``(pooled, frames)`` from several graph runs' pooled statistics (frame-weighted)."""
    from serkit.data.normalize import frame_stats

    parts = [p for p in parts if int(p["frames"])]
    if not parts:
        return None
    frames = [int(p["frames"]) for p in parts]
    mean, std = frame_stats(np.stack([p["pooled"] for p in parts]), frames)
    return np.concatenate([mean, std], axis=-1), sum(frames)


class OnnxMultiViewRecognizer(OnnxRecognizer):
    """The exported graph of a multi-view model (IF-MVSE, :mod:`serkit.export_views`): the owned statistics and the
    speaker's come per view (``{view: ...}``), as :class:`~serkit.inference.views.MultiViewRecognizer` keeps them."""

    @classmethod
    def loads(cls, model_dir: Path, backend: str) -> bool:
        """A model folder whose ``encoder.json`` lists ``views``, on the ``onnx`` backend."""
        if backend != "onnx" or not (Path(model_dir) / "encoder.json").exists():
            return False
        with model_folder_part(Path(model_dir), "encoder.json"):
            enc = json.loads((Path(model_dir) / "encoder.json").read_text())
        return isinstance(enc, dict) and "views" in enc

    @property
    def views(self) -> list[str]:
        return list(self.meta["views"])

    def _owned_views(self, out: dict) -> dict | None:
        """``{view: (pooled, frames)}`` of one graph run; None when a view owns no frame."""
        own = {v: (out[f"pooled_{v}"], int(out[f"frames_{v}"])) for v in self.views}
        return None if any(n == 0 for _, n in own.values()) else own

    def _encode(self, pieces):
        """As :meth:`OnnxRecognizer._encode`, with the owned statistics per view."""
        high = self.meta.get("max_samples")
        for key, signal, own in pieces:
            if high is not None and len(signal) > high:
                parts = [self._owned_views(self.run_window(signal[s:s + high])) for s in range(0, len(signal), high)
                         if len(signal) - s >= int(self.meta["min_samples"])]
                parts = [p for p in parts if p is not None]
                yield key, _Window(signal, None), self._combine_parts(parts) if parts else None
                continue
            out = self.run_window(signal, own)
            yield key, _Window(signal, out.get("scores_global")), self._owned_views(out)

    def _combine_parts(self, parts: list[dict]) -> dict:
        """One ``{view: (pooled, frames)}`` from several graph runs (frame-weighted)."""
        from serkit.data.normalize import frame_stats

        out = {}
        for v in self.views:
            frames = [p[v][1] for p in parts]
            mean, std = frame_stats(np.stack([p[v][0] for p in parts]), frames)
            out[v] = (np.concatenate([mean, std], axis=-1), sum(frames))
        return out

    def _combine(self, own: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        from serkit.data.normalize import frame_stats

        return {v: frame_stats(np.stack([o[v][0] for o in own]), [o[v][1] for o in own]) for v in self.views}

    def _ready_statistics(self, enroll) -> bool:
        return isinstance(enroll, dict) and set(enroll) == set(self.views) and all(
            OnnxRecognizer._ready_statistics(tuple(s)) for s in enroll.values())
