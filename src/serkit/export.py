"""``serkit export MODEL --format onnx``: a trained model as one ONNX graph, waveform in, scores out.

The graph holds what :class:`serkit.Recognizer` runs in torch for one window: the encoder (Whisper's log-mel and
blocks at the window's own length: the sample axis is dynamic), the feature stage (the stored layers, float16
rounding as the feature cache stores frames, speaker normalisation where the model uses it, pooled statistics)
and the downstream model with its softmax. It is written with ``torch.onnx.export(..., dynamo=True)`` and checked
against torch on a signal of another length before it is kept.

Inputs: ``waveform`` float32 ``(1, samples)`` at 16 kHz; for a model trained with ``features.normalize:
speaker`` also ``speaker_mean`` and ``speaker_std`` float32 ``(layers, dim)`` (see
:meth:`serkit.Recognizer.speaker_statistics`). Outputs: ``scores`` ``(outputs,)`` (class probabilities or
attribute values), ``pooled`` ``(layers, 2*dim)`` (per-layer frame mean then std of the unnormalised features,
for enrolment statistics) and ``frames`` (int64 scalar, the frame count). What a runtime needs to know (classes,
layers, limits, the check) is in the graph's metadata under :data:`METADATA_KEY`.
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

#: File name of the exported graph inside a model folder.
ONNX_FILE = "model.onnx"
#: Metadata key (``metadata_props``) holding the graph's description as JSON.
METADATA_KEY = "serkit"
#: Largest max-abs difference of ``scores`` between onnxruntime and torch that an export may show.
TOLERANCE = 1e-3
#: Shortest input (samples) the exported graph accepts; shorter windows are zero-padded by the runtime.
MIN_SAMPLES = 1600
#: Seconds of the signals the export traces with and checks on (two lengths, so the dynamic axis is exercised).
TRACE_SECONDS, CHECK_SECONDS = 2.0, 3.31  # 3.31 s: off the 20 ms frame grid


class RecognizerGraph(nn.Module):
    """One window through encoder, feature stage and downstream model (what the exported graph computes).

    Args:
        encoder: a :class:`serkit.encoders.base.Encoder` in eval mode.
        model: the downstream model (``model(batch) -> {"logits" | "prediction": (1, outputs)}``).
        layers: hidden-state indices the model reads (as the cache stores them).
        level: ``"frames"`` or ``"pooled"``: what the model reads.
        normalize: whether features are z-scored with the speaker's statistics (extra inputs).
        cached: the model was trained on cached features (frames rounded to float16 before use).
        task: ``"classification"`` (scores are softmax probabilities) or ``"regression"``.
    """

    def __init__(self, encoder: nn.Module, model: nn.Module, layers: list[int], *, level: str, normalize: bool,
                 cached: bool, task: str):
        super().__init__()
        self.encoder, self.model, self.layers = encoder, model, list(layers)
        self.level, self.normalize, self.cached, self.task = level, normalize, cached, task

    def forward(self, waveform: torch.Tensor, speaker_mean: torch.Tensor | None = None,
                speaker_std: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from serkit.cache import pooled_statistics

        out = self.encoder(waveform)  # no lengths: one unpadded signal
        feats = torch.stack([out.hidden_states[i][0] for i in self.layers]).float()  # (layers, frames, dim)
        pooled = pooled_statistics(feats)
        frames = torch.ones_like(feats[0, :, 0], dtype=torch.int64).sum()
        if self.level == "pooled":
            x = pooled
            if self.normalize:
                dim = speaker_mean.shape[-1]
                x = torch.cat([(x[:, :dim] - speaker_mean) / speaker_std, x[:, dim:] / speaker_std], dim=-1)
            batch = {"pooled": x[None]}
        else:
            x = feats.half().float() if self.cached else feats
            if self.normalize:  # as serkit.data.normalize.normalize_frames on float16 frames
                x = ((x - speaker_mean[:, None]) / speaker_std[:, None]).half().float()
            batch = {"features": x[None], "frame_mask": torch.ones_like(x[0, :, 0], dtype=torch.bool)[None]}
        y = self.model(batch)
        scores = torch.softmax(y["logits"].float(), -1)[0] if self.task == "classification" else y["prediction"][0]
        return scores, pooled, frames


def graph_module(rec) -> RecognizerGraph:
    """The :class:`RecognizerGraph` of a torch :class:`serkit.Recognizer` (its encoder is loaded if needed)."""
    cfg = rec.cfg
    waveform_model = cfg["features"]["source"] == "waveform"
    if waveform_model:  # encoder inside the model (fine-tuned): take both from it
        encoder, model, layers = rec.model.encoder, rec.model.downstream, rec.model.layers
    else:
        encoder, model, layers = rec.encoder, rec.model, rec.encoder_info["layers"]
    return RecognizerGraph(encoder.eval(), model.eval(), layers, level=cfg["features"].get("level", "frames"),
                           normalize=rec.normalize != "none", cached=not waveform_model,
                           task=rec.labels.task).eval()


def _inputs(graph: RecognizerGraph, signal: np.ndarray) -> tuple[torch.Tensor, ...]:
    wave = torch.from_numpy(np.ascontiguousarray(signal, dtype=np.float32))[None]
    if not graph.normalize:
        return (wave,)
    shape = (len(graph.layers), graph.encoder.hidden_size)
    rng = np.random.default_rng(1)  # statistics of some speaker: any positive std exercises the same graph
    return (wave, torch.from_numpy(rng.normal(0, 0.1, shape).astype(np.float32)),
            torch.from_numpy(rng.uniform(0.5, 2.0, shape).astype(np.float32)))


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
        raise SerkitError(f"export needs onnx and onnxruntime ({exc.name} is missing): pip install 'serkit[export]'") from None
    from serkit.inference import Recognizer
    from serkit.io import atomic_write_bytes

    rec = Recognizer.from_pretrained(model_dir, precision="fp32")  # the graph computes in float32
    graph = graph_module(rec)
    enc = graph.encoder
    window = int(rec.window * SAMPLE_RATE)
    max_samples = enc.max_samples
    if max_samples is not None and window > max_samples:
        raise SerkitError(f"{model_dir}: predict.window_seconds={rec.window:g} exceeds the encoder's limit of "
                          f"{max_samples / SAMPLE_RATE:g} s; export scores one window per run")
    out = Path(out) if out is not None else Path(model_dir) / ONNX_FILE
    names = ["waveform"] + (["speaker_mean", "speaker_std"] if graph.normalize else [])
    samples = torch.export.Dim("samples", min=MIN_SAMPLES, max=max_samples or 2**31 - 1)
    dynamic = {"waveform": {1: samples}} | ({"speaker_mean": None, "speaker_std": None} if graph.normalize else {})
    t0 = time.time()
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(graph, _inputs(graph, _test_signal(TRACE_SECONDS, 0)), dynamo=True,
                                    input_names=names, output_names=["scores", "pooled", "frames"],
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
        "inputs": names, "outputs": ["scores", "pooled", "frames"], "sample_rate": SAMPLE_RATE,
        "min_samples": MIN_SAMPLES, "max_samples": max_samples, "layers": list(graph.layers),
        "level": graph.level, "normalize": rec.normalize, "encoder": rec.encoder_info.get("encoder"),
        "encoder_mode": rec.encoder_info.get("mode"), "precision": "fp32", "torch": torch.__version__, "onnx": onnx.__version__,
        "check": check, "export_seconds": round(export_seconds, 1),
    }
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    atomic_write_bytes(out, proto.SerializeToString())
    log(f"exported in {export_seconds:.0f} s -> {out} ({out.stat().st_size / 2**20:.1f} MiB); onnxruntime vs torch "
        f"on a {CHECK_SECONDS:g} s signal: max |diff| of scores {check['max_abs_diff']:.1e} (tolerance {TOLERANCE:g})")
    return out


def _check(model_bytes: bytes, graph: RecognizerGraph) -> dict:
    """Max abs difference of ``scores`` between onnxruntime and torch on a signal the export did not trace."""
    import onnxruntime as ort

    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    inputs = _inputs(graph, _test_signal(CHECK_SECONDS, 1))
    with torch.no_grad():
        ref = graph(*inputs)[0].numpy()
    got = session.run(["scores"], {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs, strict=True)})[0]
    return {"max_abs_diff": float(np.abs(got - ref).max()), "seconds": CHECK_SECONDS}


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
