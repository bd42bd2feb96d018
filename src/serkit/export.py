"""``serkit export MODEL --format onnx``: a trained model as one ONNX graph, waveform in, scores out.

The graph holds what :class:`serkit.Recognizer` runs in torch for one window: the encoder (Whisper's log-mel and
blocks at the window's own length: the sample axis is dynamic), the feature stage (the stored layers, float16
rounding as the feature cache stores frames, speaker normalisation where the model uses it, pooled statistics)
and the downstream model with its softmax. It is written with ``torch.onnx.export(..., dynamo=True)`` and checked
against torch on a signal of another length before it is kept.

Inputs: ``waveform`` float32 ``(1, samples)`` at 16 kHz; ``own`` int64 ``(2,)``: the samples ``[start, end)`` of
the window whose frames count for the speaker statistics (``[0, samples)`` for a whole clip); for a model with a
speaker-normalised head also ``speaker_mean`` and ``speaker_std`` float32 ``(layers, dim)`` (see
:meth:`serkit.Recognizer.speaker_statistics`). Outputs: ``scores_speaker`` and / or ``scores_global``
``(outputs,)`` (class probabilities or attribute values of each head), ``pooled`` ``(layers, 2*dim)`` (per-layer
mean then std of the owned frames' unnormalised features) and ``frames`` (int64, their count), from which the
speaker statistics are combined. What a runtime needs to know (heads, classes, layers, limits, the check) is in
the graph's metadata under :data:`METADATA_KEY`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from serkit.constants import SAMPLE_RATE
from serkit.errors import SerkitError
from serkit.export_views import MultiViewGraph, multi_view_graph, owned_pooled
from serkit.model_folder import METADATA_KEY, ONNX_FILE

#: Largest max-abs difference of ``scores`` between onnxruntime and torch that an export may show.
TOLERANCE = 1e-3
#: Shortest input (samples) the exported graph accepts (0.1 s); the onnx backend refuses shorter windows.
MIN_SAMPLES = 1600
#: Seconds of the signals the export traces with and checks on (two lengths, so the dynamic axis is exercised).
TRACE_SECONDS, CHECK_SECONDS = 2.0, 3.31  # 3.31 s: off the 20 ms frame grid


class RecognizerGraph(nn.Module):
    """One window through encoder, feature stage and head(s) (what the exported graph computes).

    Args:
        encoder: a :class:`serkit.encoders.base.Encoder` in eval mode.
        heads: ``{"speaker": model, "global": model}`` (either may be missing): downstream models
            (``model(batch) -> {"logits" | "prediction": (1, outputs)}``); ``speaker`` reads speaker-normalised
            features (the graph then takes the speaker's statistics), ``global`` the features as they are.
        layers: hidden-state indices the heads read (as the cache stores them).
        level: ``"frames"`` or ``"pooled"``: what the heads read.
        cached: the heads were trained on cached features (frames rounded to float16 before use).
        task: ``"classification"`` (scores are softmax probabilities) or ``"regression"``.
        stats_in_batch: the speaker head normalises what its own encoder blocks compute: it gets the raw features
            and the speaker's statistics as ``speaker_mean`` / ``speaker_std`` in its batch.

    ``forward(waveform (1, samples), own (2,) int64, [speaker_mean, speaker_std (layers, dim)])`` returns the
    scores ``(outputs,)`` of each head (in :attr:`head_names` order), then ``pooled`` ``(layers, 2*dim)`` and
    ``frames`` (int64) of the frames that samples ``own[0]:own[1]`` of the window own (the Recognizer's rule for
    overlapping windows: frame ``round(own / samples * frames)``), for the speaker statistics.
    """

    def __init__(self, encoder: nn.Module, heads: dict[str, nn.Module], layers: list[int], *, level: str,
                 cached: bool, task: str, transform: nn.Module | None = None,
                 temperatures: dict[str, float] | None = None, stats_in_batch: bool = False):
        super().__init__()
        unknown = set(heads) - {"speaker", "global"}
        if unknown or not heads:
            raise ValueError(f"heads must be 'speaker' and / or 'global', got {sorted(heads)}")
        self.encoder, self.layers = encoder, list(layers)
        self.head_names = [h for h in ("speaker", "global") if h in heads]
        # keys that are not Python keywords ("global" is one): torch.export generates code with them as attributes
        self.heads = nn.ModuleDict({f"head_{h}": heads[h] for h in self.head_names})
        self.level, self.cached, self.task, self.stats_in_batch = level, cached, task, stats_in_batch
        #: per head, the temperature of its probabilities (fitted on validation; 1.0 without calibration)
        self.temperatures = {h: float((temperatures or {}).get(h, 1.0)) for h in self.head_names}
        from serkit.data.feature_transform import FeatureTransform

        #: the feature stage module the Recognizer and the training datasets apply (layer choice, normalisation,
        #: frame steps)
        self.transform = transform if transform is not None else FeatureTransform(level, half_frames=cached)

    @property
    def normalize(self) -> bool:
        """Whether the graph takes the speaker's statistics (it has a speaker-normalised head)."""
        return "speaker" in self.head_names

    def input_names(self) -> list[str]:
        return ["waveform", "own"] + (["speaker_mean", "speaker_std"] if self.normalize else [])

    def output_names(self) -> list[str]:
        return [f"scores_{h}" for h in self.head_names] + ["pooled", "frames"]

    def forward(self, waveform: torch.Tensor, own: torch.Tensor, speaker_mean: torch.Tensor | None = None,
                speaker_std: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        from serkit.features.pooling import pooled_statistics

        out = self.encoder(waveform)  # no lengths: one unpadded signal
        feats = torch.stack([out.hidden_states[i][0] for i in self.layers]).float()  # (layers, frames, dim)
        scores = []
        for head in self.head_names:
            stats = (speaker_mean, speaker_std) if head == "speaker" else None
            y = self.heads[f"head_{head}"](self._batch(feats, pooled_statistics(feats), stats))
            scores.append(torch.softmax(y["logits"].float() / self.temperatures[head], -1)[0]
                          if self.task == "classification" else y["prediction"].float()[0])
        return (*scores, *owned_pooled(feats, own, waveform.shape[1]))

    def _batch(self, feats: torch.Tensor, pooled: torch.Tensor, stats) -> dict:
        """A head's batch of one, as :class:`serkit.Recognizer` builds it: the feature stage module on the stored
        layers' pooled statistics ``(layers, 2*dim)`` or frames ``(layers, frames, dim)``."""
        mean, std = stats if stats is not None else (None, None)
        inner = {"speaker_mean": mean[None], "speaker_std": std[None]} if self.stats_in_batch and stats else {}
        if inner:
            mean = std = None  # the model normalises its own blocks' outputs with them
        if self.level == "pooled":
            return {"pooled": self.transform(pooled[None], mean, std), **inner}
        x = feats.half() if self.cached else feats  # the cache stores frames in float16
        x = self.transform(x[None], mean, std).float()
        return {"features": x, "frame_mask": torch.ones_like(x[:, 0, :, 0], dtype=torch.bool), **inner}


def graph_module(rec) -> RecognizerGraph:
    """The :class:`RecognizerGraph` of a torch :class:`serkit.Recognizer` (its encoder is loaded if needed)."""
    cfg = rec.cfg
    if "views" in rec.encoder_info:  # several encoders (IF-MVSE)
        return multi_view_graph(rec)
    heads = dict(getattr(rec, "heads", None) or {("speaker" if rec.normalize != "none" else "global"): rec.model})
    waveform_model = cfg["features"]["source"] == "waveform"
    transform = rec.transform
    if waveform_model:  # encoder inside the model (fine-tuned): take it from there
        from serkit.data.feature_transform import FeatureTransform

        first = next(iter(heads.values()))
        encoder, layers = first.encoder, first.layers
        heads = {h: m.downstream for h, m in heads.items()}
        # the model's own layers, as predict feeds it (frames, or their pooled statistics for a pooled head)
        transform = FeatureTransform(cfg["features"].get("level") or "frames", half_frames=False)
    else:
        encoder, layers = rec.encoder, rec.encoder_info["layers"]
    return RecognizerGraph(encoder.eval(), {h: m.eval() for h, m in heads.items()}, layers,
                           level=transform.level, cached=not waveform_model, task=rec.labels.task,
                           transform=transform, temperatures={h: rec.temperature(h) for h in heads},
                           stats_in_batch=rec.stats_in_batch).eval()


def graph_inputs(graph: RecognizerGraph | MultiViewGraph, signal: np.ndarray, own: tuple[int, int] | None = None,
                 stats: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The graph's inputs by name for one window ``signal`` (16 kHz float32). ``own``: the samples whose frames
    count for the speaker statistics (default all); ``stats``: the speaker's ``(mean, std)`` (``{view: (mean,
    std)}`` for a multi-view graph; default: some speaker's, for a graph whose speaker scores are not wanted)."""
    if isinstance(graph, MultiViewGraph):
        return graph.inputs(signal, own, stats)
    feed = {"waveform": np.ascontiguousarray(signal, dtype=np.float32)[None],
            "own": np.array(own if own is not None else (0, len(signal)), dtype=np.int64)}
    if graph.normalize:
        if stats is None:
            shape = (len(graph.layers), graph.encoder.hidden_size)
            rng = np.random.default_rng(1)  # any positive std exercises the same computation
            stats = rng.normal(0, 0.1, shape).astype(np.float32), rng.uniform(0.5, 2.0, shape).astype(np.float32)
        feed["speaker_mean"], feed["speaker_std"] = (np.asarray(x, dtype=np.float32) for x in stats)
    return feed


def _arguments(graph: RecognizerGraph | MultiViewGraph, feed: dict[str, np.ndarray]) -> tuple:
    """The torch call arguments of ``graph`` for the inputs ``feed`` (by name): tensors by position, a multi-view
    graph's speaker statistics as one list."""
    tensors = [torch.from_numpy(feed[k]) for k in graph.input_names()]
    if isinstance(graph, MultiViewGraph):
        return (tensors[0], tensors[1], tensors[2:])
    return tuple(tensors)


def _test_signal(seconds: float, seed: int) -> np.ndarray:
    """A voiced-like test signal: harmonics of a gliding pitch plus a little noise, float32 16 kHz."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = 140 + 60 * np.sin(2 * np.pi * 0.7 * t + seed)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    x = sum(np.sin(k * phase) / k for k in range(1, 8)) * 0.1
    return (x + 0.005 * np.random.default_rng(seed).standard_normal(len(t))).astype(np.float32)


def export_onnx(model_dir: str | Path, out: str | Path | None = None, *, opset: int | None = None,
                log=print) -> Path:
    """Export the model folder ``model_dir`` to ``out`` (default ``model_dir/model.onnx``) and check it.

    The check runs torch and onnxruntime on a test signal of another length than the traced one and refuses the
    export (:class:`SerkitError`) when ``scores`` differ by more than :data:`TOLERANCE`; the measured difference
    is stored in the metadata. Returns the path written.
    """
    try:
        import onnx
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise SerkitError(f"export needs onnx and onnxruntime ({exc.name} is missing): "
                          "pip install 'serkit[export]'") from None
    from serkit.inference import Recognizer
    from serkit.io import atomic_write_bytes

    rec = Recognizer.from_pretrained(model_dir, precision="fp32")  # the graph computes in float32
    graph = graph_module(rec)
    encoders = list(graph.encoders.values()) if isinstance(graph, MultiViewGraph) else [graph.encoder]
    window = int(rec.window * SAMPLE_RATE)
    limits = [e.max_samples for e in encoders if e.max_samples is not None]
    max_samples = min(limits) if limits else None
    if max_samples is not None and window > max_samples:
        raise SerkitError(f"{model_dir}: predict.window_seconds={rec.window:g} exceeds the encoder's limit of "
                          f"{max_samples / SAMPLE_RATE:g} s; export scores one window per run")
    out = Path(out) if out is not None else Path(model_dir) / ONNX_FILE
    names, outputs = graph.input_names(), graph.output_names()
    samples = torch.export.Dim("samples", min=MIN_SAMPLES, max=max_samples or 2**31 - 1)
    extra = [None] * (len(names) - 2)  # the speaker statistics: fixed shapes
    # by position; a multi-view graph takes its statistics as one list argument
    dynamic = [{1: samples}, None] + ([extra] if isinstance(graph, MultiViewGraph) else extra)
    t0 = time.time()
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        feed = graph_inputs(graph, _test_signal(TRACE_SECONDS, 0))
        program = torch.onnx.export(graph, _arguments(graph, feed), dynamo=True,
                                    input_names=names, output_names=outputs,
                                    dynamic_shapes=dynamic, opset_version=opset, optimize=True, verbose=False)
    proto = program.model_proto
    export_seconds = time.time() - t0
    check = _check(proto.SerializeToString(), graph)
    if check["max_abs_diff"] > TOLERANCE:
        raise SerkitError(f"{model_dir}: the exported graph differs from torch by {check['max_abs_diff']:.2e} "
                          f"(tolerance {TOLERANCE:g}); not written")
    labels = rec.labels
    meta = {
        "format": 1, "task": labels.task, "classes": list(labels.classes) if labels.task == "classification" else [],
        "targets": list(labels.targets) if labels.task != "classification" else [],
        "inputs": names, "outputs": outputs, "heads": graph.head_names, "sample_rate": SAMPLE_RATE,
        "min_samples": MIN_SAMPLES, "max_samples": max_samples,
        "layers": dict(graph.layers) if isinstance(graph, MultiViewGraph) else list(graph.layers),
        "views": list(graph.views) if isinstance(graph, MultiViewGraph) else None,
        "level": getattr(graph, "level", "pooled"), "encoder": rec.encoder_info.get("encoder"),
        "encoder_mode": rec.encoder_info.get("mode"), "precision": "fp32", "torch": torch.__version__,
        "onnx": onnx.__version__,
        "check": check, "export_seconds": round(export_seconds, 1),
    }
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    atomic_write_bytes(out, proto.SerializeToString())
    log(f"exported in {export_seconds:.0f} s -> {out} ({out.stat().st_size / 2**20:.1f} MiB); onnxruntime vs torch "
        f"on a {CHECK_SECONDS:g} s signal: max |diff| of scores {check['max_abs_diff']:.1e} (tolerance {TOLERANCE:g})")
    return out


def _check(model_bytes: bytes, graph: RecognizerGraph) -> dict:
    """Max abs difference of every output between onnxruntime and torch on a signal the export did not trace
    (the owned range a part of it, as for a window in the middle of a long file)."""
    import onnxruntime as ort

    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    signal = _test_signal(CHECK_SECONDS, 1)
    feed = graph_inputs(graph, signal, own=(len(signal) // 5, len(signal) - len(signal) // 7))
    with torch.no_grad():
        ref = graph(*_arguments(graph, feed))
    got = session.run(graph.output_names(), feed)
    diffs = {name: float(np.abs(g - r.numpy()).max())
             for name, g, r in zip(graph.output_names(), got, ref, strict=True)}
    scores = max(v for k, v in diffs.items() if k.startswith("scores_"))
    return {"max_abs_diff": scores, "outputs": diffs, "seconds": CHECK_SECONDS}


def _export(args) -> int:
    if args.format != "onnx":
        raise SerkitError(f"--format {args.format!r}: only onnx is supported")
    export_onnx(args.model, args.out, opset=args.opset)
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("export", help="export a trained model (encoder + feature stage + head) to ONNX")
    p.add_argument("model", help="model folder from `serkit train`")
    p.add_argument("--format", default="onnx", help="onnx (the only format)")
    p.add_argument("--out", help=f"output file (default MODEL/{ONNX_FILE})")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    p.set_defaults(func=_export)
