"""Prediction with a trained model: one interface for a signal, a file, a list of files, a manifest or a long
recording.

``Recognizer.from_pretrained(MODEL).predict(path_or_array)`` returns the label and class probabilities (or
attribute values) per input, and which head answered (``"head"``). ``MODEL`` is a model folder from
``serkit train`` or a Hugging Face hub id (``owner/name``). Inputs longer than ``predict.window_seconds`` are
scored in windows (hop ``predict.hop_seconds``); the windows are reported and their probabilities averaged.
:meth:`Recognizer.predict_segments` finds speech with silero-vad and gives each segment its emotion.

Heads: a model trained with speaker normalisation (``features.normalize: speaker``) has a speaker-normalised head,
used when the speaker's feature statistics can be estimated (enrolment audio, or several files or a long
recording declared to be one speaker: at least ``MIN_ENROLL_SECONDS``), and a head on global features, used
otherwise. Every window is encoded once; the speaker statistics come from the same features that are scored.

Nothing here imports Lightning or matplotlib (the timeline figure imports matplotlib when it is drawn).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file

from serkit.audio import prepare_signal, read_audio, unusable
from serkit.constants import SAMPLE_RATE
from serkit.data.labels import LabelMap
from serkit.errors import AudioError, SerkitError
from serkit.models.registry import ModelSpec

#: Least audio (seconds) from which :meth:`Recognizer.speaker_statistics` estimates a speaker's statistics.
MIN_ENROLL_SECONDS = 10.0
#: Files of a model folder that every model has.
MODEL_FILES = ("config.yaml", "model.safetensors", "labels.json", "encoder.json", "meta.json")


@contextlib.contextmanager
def model_folder_part(model_dir: Path, name: str):
    """Reading file ``name`` of a model folder: a garbled or crafted file (bad JSON / YAML, missing fields,
    weights of other shapes) is a one-line SerkitError naming it, not a traceback."""
    try:
        yield
    except (ValueError, KeyError, TypeError, RuntimeError, AttributeError, yaml.YAMLError, SafetensorError) as exc:
        why = "; ".join(ln.strip() for ln in str(exc).strip().splitlines()[:2])[:300]
        raise SerkitError(f"{model_dir / name}: not a usable serkit model file ({type(exc).__name__}: {why})"
                          ) from None


def _check_model_folder(d: Path, files: dict, labels: LabelMap, meta: dict, enc: dict) -> None:
    """Before anything is built from a model folder (possibly from a stranger): every head file named by
    ``meta.json`` lies inside the folder, the labels fit the head's output count, and ``encoder.json`` holds
    values of the types serkit wrote (an encoder id, integer layers, a known mode)."""
    records = enc.get("views") if isinstance(enc, dict) and "views" in enc else {"": enc}
    for view, rec in (records.items() if isinstance(records, dict) else [("", records)]):
        where = f"{d / 'encoder.json'}" + (f" (view {view})" if view else "")
        layers = rec.get("layers") if isinstance(rec, dict) else None
        if not isinstance(rec, dict) or not isinstance(rec.get("encoder"), str) or not (
                layers is None or (isinstance(layers, list) and all(type(x) is int for x in layers))) or \
                rec.get("mode", "native") not in ("native", "padded"):
            raise SerkitError(f"{where}: not a usable serkit model file (expects an 'encoder' id, integer "
                              f"'layers' and a mode native / padded)")
    root = d.resolve()
    for head, file in files.items():
        if not isinstance(file, str) or not (d / file).resolve().is_relative_to(root):
            raise SerkitError(f"{d / 'meta.json'}: the {head} head file {file!r} is not inside the model folder; "
                              f"refused")
    names = labels.classes if labels.task == "classification" else labels.targets
    outputs = (meta.get("spec") or {}).get("num_outputs")
    if outputs is not None and outputs != len(names):
        raise SerkitError(f"{d / 'labels.json'}: {len(names)} {'classes' if labels.task == 'classification' else 'targets'}"
                          f" but meta.json's head has {outputs} outputs; not a consistent serkit model folder")


def _usable(signal: np.ndarray, name: str) -> np.ndarray:
    """``signal``, or an :class:`AudioError` when it cannot be labelled (e.g. under ``MIN_SECONDS``)."""
    problem = unusable(signal)
    if problem is not None:
        raise AudioError(name, problem)
    return signal


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` ->
    :class:`torch.device`; a device this machine or torch build cannot use is a :class:`SerkitError`."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise SerkitError(f"device {name!r} is unknown; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA device is visible"
            raise SerkitError(f"device {name!r} is not available: {why} (torch {torch.__version__}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise SerkitError(f"device {name!r} is not available: {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise SerkitError(f"device {name!r} is not available on this machine; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise SerkitError(f"device {name!r} is not supported; use auto, cpu, cuda, cuda:N or mps")
    return dev


def load_recorded_encoder(info: dict, device, dtype):
    """The encoder a model folder records (``{encoder, mode, revision}``), loaded as found offline or on the hub,
    with a warning when the loaded revision is not the one the model was trained on."""
    from serkit.encoders import load_encoder

    encoder = load_encoder(info["encoder"], mode=info.get("mode", "native"), device=device, revision=None,
                           dtype=dtype)
    rev = info.get("revision")
    if rev and getattr(encoder, "revision", rev) not in (rev, "local"):
        import warnings

        warnings.warn(f"model was trained on {info['encoder']} revision {rev}, loaded revision "
                      f"{encoder.revision}", stacklevel=3)
    return encoder


def resolve_model_dir(model: str | Path, revision: str | None = None) -> Path:
    """A local model folder, or the local snapshot of hub model ``owner/name`` (downloaded unless offline)."""
    d = Path(model)
    if d.is_dir():
        return d
    name = str(model)
    if d.exists() or name.count("/") != 1 or name.startswith((".", "/", "~")):
        raise SerkitError(f"{name}: no such model folder (and not a hub id owner/name); make one with `serkit train`")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
    try:
        return Path(snapshot_download(repo_id=name, revision=revision))
    except LocalEntryNotFoundError:
        where = "offline (HF_HUB_OFFLINE=1)" if offline else "the hub cannot be reached"
        raise SerkitError(f"{name}: not a local folder, and hub model {name!r} is not in the local hub cache; "
                          f"{where}") from None
    except RepositoryNotFoundError:
        raise SerkitError(f"{name}: not a local folder, and no such model on the hub (or it is private)") from None
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise SerkitError(f"{name}: cannot fetch hub model: {str(exc).splitlines()[0]}") from None


@dataclass
class _Input:
    """One input of a prediction call: where it came from, its 16 kHz signal (dropped once encoded)."""

    name: str
    load: Callable[[], np.ndarray]
    duration: float = 0.0
    windows: list[tuple[int, int]] = field(default_factory=list)
    head_inputs: list = field(default_factory=list)  # per window: pooled / fp16 frames / waveform
    own: list = field(default_factory=list)  # per window: (pooled stats of the frames it owns, frames)
    error: str | None = None


class Recognizer:
    """A trained model ready to predict. Build it with :meth:`from_pretrained`.

    ``heads``: ``{"speaker": module, "global": module}`` (either may be missing); ``device``: see
    :func:`resolve_device`; ``batch_size``: windows per encoder and head batch.
    """

    def __init__(self, heads: dict[str, torch.nn.Module] | torch.nn.Module, cfg: dict, labels: LabelMap,
                 encoder_info: dict, device: str | torch.device = "cpu", batch_size: int = 16,
                 model_dir: Path | None = None, precision: str | None = None, calibration: dict | None = None):
        from serkit.precision import resolve_precision

        normalize = cfg.get("features", {}).get("normalize", "none")
        if isinstance(heads, torch.nn.Module):
            heads = {"speaker" if normalize == "speaker" else "global": heads}
        self.device = resolve_device(device)
        self.heads = {h: m.eval().to(self.device) for h, m in heads.items()}
        self.cfg, self.labels, self.encoder_info = cfg, labels, encoder_info
        self.batch_size = max(1, int(batch_size))
        #: the encoder's precision (fp32 / bf16): as the model's features were extracted unless asked otherwise
        self.precision = resolve_precision(precision or encoder_info.get("precision", "fp32"), self.device)
        self.model_dir = model_dir
        #: the feature width the heads were trained on (meta.json ``spec.hidden_size``; None: not checked)
        self.feature_width: int | None = None
        #: per head ``{temperature, abstain_threshold, abstain_target}`` fitted on the validation speakers
        #: (meta.json ``calibration``; :mod:`serkit.calibration`): probabilities are ``softmax(logits / T)``
        self.calibration = dict(calibration or {})
        self._encoder = None
        p = cfg.get("predict", {})
        self.window = float(p.get("window_seconds", 10.0))
        self.hop = float(p.get("hop_seconds", 5.0))
        #: "speaker" when the model was trained on speaker-normalised features (see serkit.data.normalize)
        self.normalize = normalize
        #: the model normalises encoder outputs itself (encoder blocks in the loop): it gets raw features plus the
        #: speaker statistics (``speaker_mean`` / ``speaker_std``) instead of normalised features
        self.stats_in_batch = any(bool(getattr(m, "takes_speaker_stats", False)) for m in self.heads.values()) or \
            cfg.get("features", {}).get("source") == "waveform"
        #: the feature stage (layer choice, speaker normalisation, frame steps) as the training datasets applied it;
        #: a model with encoder blocks in the loop gets every stored layer and normalises them itself
        from serkit.data.feature_transform import FeatureTransform

        stored = len(encoder_info["layers"]) if "layers" in encoder_info and not self.stats_in_batch else None
        self.transform = FeatureTransform.from_options(cfg.get("features", {}), stored)

    @property
    def layer_index(self) -> list[int] | None:
        """Positions in the stored layers the heads read (None: all)."""
        return self.transform.layers

    @property
    def model(self) -> torch.nn.Module:
        """The main head (speaker-normalised when there is one)."""
        return self.heads.get("speaker", self.heads.get("global"))

    @classmethod
    def from_pretrained(cls, model: str | Path | None = None, device: str | torch.device = "auto",
                        batch_size: int = 16, revision: str | None = None, precision: str | None = None,
                        backend: str = "torch") -> Recognizer:
        """Load a model folder from ``serkit train`` or a hub id ``owner/name`` (see :func:`resolve_model_dir`);
        no ``model``: the model that ships inside serkit (:mod:`serkit.shipped_model`).
        ``precision`` (auto / fp32 / bf16) of the encoder; default: the one the model's training features were
        extracted in (``encoder.json``; fp32 for models from before it was recorded). ``backend``: ``"torch"``,
        or ``"onnx"`` for the graph ``serkit export MODEL --format onnx`` wrote, run by onnxruntime
        (:mod:`serkit.onnx_backend`; float32, CPU unless ``device`` is cuda)."""
        from serkit.recipes.base import get_recipe

        if model is None:
            from serkit.shipped_model import default_model_dir

            model = default_model_dir()
        if backend == "onnx":
            from serkit.onnx_backend import OnnxRecognizer

            d = resolve_model_dir(model, revision)
            return OnnxRecognizer.from_folder(d, device="cpu" if str(device) == "auto" else str(device))
        if backend != "torch":
            raise SerkitError(f"backend {backend!r}: expected 'torch' or 'onnx'")

        device = resolve_device(device)  # an unusable device fails before anything is loaded
        d = resolve_model_dir(model, revision)
        for name in MODEL_FILES:
            if not (d / name).exists():
                raise SerkitError(f"{d}: not a serkit model folder (missing {name}); make one with `serkit train`")
        with model_folder_part(d, "config.yaml"):
            cfg = yaml.safe_load((d / "config.yaml").read_text())
            encoder_cfg, source, recipe = cfg["encoder"], cfg["features"]["source"], cfg["recipe"]
            normalize = cfg["features"].get("normalize", "none")
        with model_folder_part(d, "labels.json"):
            labels = LabelMap.from_dict(json.loads((d / "labels.json").read_text()))
        with model_folder_part(d, "encoder.json"):
            enc = json.loads((d / "encoder.json").read_text())
        with model_folder_part(d, "meta.json"):
            meta = json.loads((d / "meta.json").read_text())
            files = dict(meta.get("heads") or {"speaker" if normalize == "speaker" else "global": "model.safetensors"})
            # per head, what build_model needs beyond the config (e.g. IF-MVSE's views, score sets and weights)
            specs = {h: ModelSpec(**meta["spec"], extra={**(meta.get("head_extra") or {}).get(h, {}),
                                                         "encoder": encoder_cfg}) for h in files}
            calibration = read_calibration(meta, files)
        _check_model_folder(d, files, labels, meta, enc)
        heads = {}
        for head, file in files.items():
            if not (d / file).exists():
                raise SerkitError(f"{d}: not a serkit model folder (missing {file}, the {head} head)")
            module = get_recipe(recipe).build_model(cfg, specs[head])
            if source == "waveform":
                from serkit.encoders import load_encoder, parse_layers
                from serkit.models.encoder_model import EncoderDownstream

                e = cfg["encoder"]
                encoder = load_encoder(e["id"], mode=e.get("mode", "native"), eval_mode=True)
                layers, _ = parse_layers(e.get("layers", "all"), encoder.num_layers)
                module = EncoderDownstream(encoder, module, layers, e.get("finetune", False))
            with model_folder_part(d, file):
                module.load_state_dict(load_file(str(d / file)))
            heads[head] = module
        if "views" in enc:  # several encoders (IF-MVSE): each view encoded and normalised on its own
            from serkit.inference_views import MultiViewRecognizer

            return MultiViewRecognizer(heads, cfg, labels, enc, device, batch_size, model_dir=d, precision=precision,
                                       calibration=calibration)
        rec = cls(heads, cfg, labels, enc, device, batch_size, model_dir=d, precision=precision,
                  calibration=calibration)
        if source != "waveform":
            rec.feature_width = int(meta["spec"]["hidden_size"])
        return rec

    # -- features -------------------------------------------------------------------------------------------

    @property
    def encoder(self):
        if self._encoder is None:
            from serkit.precision import torch_dtype

            encoder = load_recorded_encoder(self.encoder_info, self.device, torch_dtype(self.precision))
            width = getattr(encoder, "hidden_size", None)
            if self.feature_width and width and int(width) != int(self.feature_width):
                raise SerkitError(f"encoder {self.encoder_info.get('encoder')!r} gives {width}-dim features, but this "
                                  f"model's heads read {self.feature_width}-dim ones (meta.json spec.hidden_size): "
                                  f"encoder.json names another encoder than the model was trained on")
            self._encoder = encoder
        return self._encoder

    @property
    def _waveform_model(self) -> bool:
        return self.cfg["features"]["source"] == "waveform"

    def _encode(self, pieces: Iterable[tuple[object, np.ndarray, tuple[int, int]]]):
        """Encode windows once: ``pieces`` are ``(key, signal (samples,), (own_start, own_end))`` (the samples of
        the piece whose frames count for the speaker statistics); yields ``(key, head input, own)`` where head
        input is pooled ``(layers, 2*dim)`` float32, frames ``(layers, frames, dim)`` float16 (as the cache
        stores them) or, for a model with the encoder inside, the waveform; ``own`` is ``(pooled stats, frames)``
        of the owned frames, or None."""
        if self._waveform_model:
            for key, signal, _ in pieces:
                yield key, torch.from_numpy(np.ascontiguousarray(signal)), None
            return
        from serkit.cache import pooled_statistics
        from serkit.encoders.runner import encode_signals

        owned = {}

        def items():
            for key, signal, own in pieces:
                owned[key] = (own, len(signal))
                yield key, signal

        pooled_level = self.cfg["features"].get("level") == "pooled"
        for key, feats in encode_signals(self.encoder, items(), self.encoder_info["layers"],
                                         max_batch_size=self.batch_size):
            own, n = owned.pop(key)
            # the cache pools before rounding frames to float16: match it exactly
            yield key, (pooled_statistics(feats) if pooled_level else feats.to(torch.float16)), \
                owned_statistics(feats, own, n)

    def speaker_statistics(self, signals: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Feature statistics ``(mean, std)`` ``(layers, dim)`` of one speaker over the frames of ``signals``
        (16 kHz float32), for models trained with ``features.normalize: speaker``. Raises :class:`SerkitError`
        when they hold less than ``MIN_ENROLL_SECONDS`` of audio (too little to estimate a speaker's statistics).
        """
        seconds = sum(len(x) for x in signals) / SAMPLE_RATE
        if seconds < MIN_ENROLL_SECONDS:
            raise SerkitError(
                f"enrolment holds {seconds:.1f} s of audio; estimating a speaker's feature statistics needs at "
                f"least {MIN_ENROLL_SECONDS:.0f} s (several files of the speaker)")
        pieces = [(i, x, (0, len(x))) for i, x in enumerate(signals)]
        own = [o for _, _, o in self._encode(pieces) if o is not None]
        return self._combine(own)

    def _enrolment(self, enroll) -> tuple[np.ndarray, np.ndarray] | None:
        """Speaker statistics from ``enroll`` (paths / 16 kHz arrays, or ready ``(mean, std)``); None if unused."""
        if enroll is None or "speaker" not in self.heads:
            return None
        if self._ready_statistics(enroll):
            return enroll
        if isinstance(enroll, (str, Path)):
            enroll = [enroll]
        return self.speaker_statistics([self._signal(x)[0] for x in enroll])

    @staticmethod
    def _ready_statistics(enroll) -> bool:
        """``enroll`` is statistics from :meth:`speaker_statistics` (not audio)."""
        return isinstance(enroll, tuple) and len(enroll) == 2 and all(isinstance(x, np.ndarray) for x in enroll)

    def _combine(self, own: list):
        """The speaker's statistics from the ``own`` parts :meth:`_encode` yielded for its pieces."""
        return _combine(own)

    # -- scoring --------------------------------------------------------------------------------------------

    def _head_for(self, stats) -> str:
        if stats is not None and "speaker" in self.heads:
            return "speaker"
        if "global" in self.heads:
            return "global"
        raise SerkitError(
            f"this model has only a speaker-normalised head (features.normalize: speaker) and needs at least "
            f"{MIN_ENROLL_SECONDS:.0f} s of the speaker's audio: give enrolment audio (`enroll=` / `--enroll`) or "
            f"several files of one speaker together (`same_speaker=True` / `--same-speaker`); models trained by "
            f"this serkit also have a global head for single clips")

    @torch.no_grad()
    def _score(self, head: str, inputs: Sequence, stats) -> np.ndarray:
        """Scores ``(len(inputs), outputs)``: probabilities (classification) or attribute values."""
        model = self.heads[head]
        use = stats if head == "speaker" else None
        out = []
        for i in range(0, len(inputs), self.batch_size):
            chunk = inputs[i:i + self.batch_size]
            if self._waveform_model:
                lengths = torch.tensor([len(x) for x in chunk])
                waves = torch.zeros(len(chunk), int(lengths.max()))
                for j, x in enumerate(chunk):
                    waves[j, :len(x)] = x
                batch = {"waveform": waves, "lengths": lengths}
            elif self.transform.level == "pooled":
                pooled = torch.stack([torch.as_tensor(x).float() for x in chunk])  # (batch, stored layers, 2*dim)
                stats_t = None if use is None else [torch.from_numpy(np.asarray(a, dtype=np.float32)) for a in use]
                batch = {"pooled": self.transform(pooled, *(stats_t or (None, None)))}
            else:
                inner = self.stats_in_batch  # raw frames; the model normalises what its encoder blocks compute
                frames = [self.transform.apply(x.numpy(), None if use is None or inner else use) for x in chunk]
                t = max(f.shape[1] for f in frames)
                feats = torch.zeros(len(frames), frames[0].shape[0], t, frames[0].shape[2])
                mask = torch.zeros(len(frames), t, dtype=torch.bool)
                for j, f in enumerate(frames):
                    feats[j, :, :f.shape[1]] = torch.from_numpy(f).float()
                    mask[j, :f.shape[1]] = True
                batch = {"features": feats, "frame_mask": mask}
            if use is not None and self.stats_in_batch:
                batch["speaker_mean"] = torch.from_numpy(np.asarray(use[0], dtype=np.float32))[None].expand(
                    len(chunk), -1, -1)
                batch["speaker_std"] = torch.from_numpy(np.asarray(use[1], dtype=np.float32))[None].expand(
                    len(chunk), -1, -1)
            batch = {k: v.to(self.device) for k, v in batch.items()}
            if self._waveform_model and self.precision == "bf16":  # the encoder runs inside the model
                with torch.autocast(self.device.type, dtype=torch.bfloat16):
                    res = model(batch)
            else:
                res = model(batch)
            if self.labels.task == "classification":
                out.append(torch.softmax(res["logits"].float() / self.temperature(head), -1).cpu().numpy())
            else:
                out.append(res["prediction"].float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.labels.num_outputs), dtype=np.float32)

    def _windows(self, n: int) -> list[tuple[int, int]]:
        w, h = int(self.window * SAMPLE_RATE), int(self.hop * SAMPLE_RATE)
        if n <= w:
            return [(0, n)]
        starts = list(range(0, n - w + 1, h))
        if starts[-1] + w < n:
            starts.append(n - w)
        return [(s, s + w) for s in starts]

    @staticmethod
    def _owned(windows: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Per window, the samples (relative to it) whose frames it contributes to the speaker statistics: the
        windows overlap, and each sample counts once (cut at the middle of each overlap)."""
        cuts = [0] + [(windows[i][0] + windows[i - 1][1]) // 2 for i in range(1, len(windows))] + [windows[-1][1]]
        return [(cuts[i] - s, cuts[i + 1] - s) for i, (s, _) in enumerate(windows)]

    def _signal(self, audio, sample_rate: int | None = None, name: str | None = None) -> tuple[np.ndarray, str]:
        if isinstance(audio, (str, Path)):
            return read_audio(audio, allow_silent=False), str(audio)
        if sample_rate is None:
            raise SerkitError("predict: give sample_rate with an array input")
        return prepare_signal(np.asarray(audio), sample_rate, name=name or "<array>", allow_silent=False), name

    def temperature(self, head: str) -> float:
        """The temperature of ``head``'s probabilities (1.0 for a model without calibration)."""
        return float((self.calibration.get(head) or {}).get("temperature", 1.0))

    def _abstain(self, result: dict, head: str) -> dict:
        """``result`` with ``label: "unknown"`` (and ``abstained: true``) when its top probability is below the
        head's abstain threshold; a model folder without one is an error (retrain it with this serkit)."""
        if self.labels.task != "classification" or "probabilities" not in result:
            return result
        cal = self.calibration.get(head) or {}
        if "abstain_threshold" not in cal:
            raise SerkitError(f"abstain: the {head} head of this model has no abstain threshold (meta.json "
                              f"calibration); train it with this serkit")
        top = max(result["probabilities"].values())
        return {**result, "label": "unknown", "abstained": True} if top < cal["abstain_threshold"] else result

    def _describe(self, score: np.ndarray) -> dict:
        if self.labels.task == "classification":
            return {"label": self.labels.classes[int(np.argmax(score))],
                    "probabilities": {c: round(float(p), 4) for c, p in zip(self.labels.classes, score, strict=True)}}
        return {"values": {a: round(float(v), 4) for a, v in zip(self.labels.targets, score, strict=True)}}

    # -- prediction -----------------------------------------------------------------------------------------

    def _encode_inputs(self, inputs: list[_Input], keep_own: bool) -> None:
        """Read and encode every window of ``inputs`` (errors are recorded per input, never raised)."""
        def pieces():
            for i, item in enumerate(inputs):
                try:
                    signal = item.load()
                except SerkitError as exc:
                    item.error = str(exc)
                    continue
                item.duration = len(signal) / SAMPLE_RATE
                item.windows = self._windows(len(signal))
                item.head_inputs = [None] * len(item.windows)
                item.own = [None] * len(item.windows)
                for j, ((s, e), own) in enumerate(zip(item.windows, self._owned(item.windows), strict=True)):
                    yield (i, j), signal[s:e], own

        for (i, j), x, own in self._encode(pieces()):
            inputs[i].head_inputs[j] = x
            if keep_own:
                inputs[i].own[j] = own

    def _scores(self, inputs: list[_Input], stats, head: str) -> list[tuple[np.ndarray, np.ndarray] | None]:
        """Per input: ``(window scores (windows, outputs), length-weighted mean (outputs,))``, None for errors."""
        flat = [h for x in inputs if x.error is None for h in x.head_inputs]
        scores = self._score(head, flat, stats)
        out, k = [], 0
        for x in inputs:
            if x.error is not None:
                out.append(None)
                continue
            sc = scores[k:k + len(x.windows)]
            k += len(x.windows)
            out.append((sc, np.average(sc, axis=0, weights=np.array([e - s for s, e in x.windows], dtype=float))))
            x.head_inputs = []  # done: free the features
        return out

    def _results(self, inputs: list[_Input], stats, head: str | None = None, abstain: bool = False) -> list[dict]:
        head = head or self._head_for(stats)
        out = []
        for x, sc in zip(inputs, self._scores(inputs, stats, head), strict=True):
            if sc is None:
                out.append({"file": x.name, "error": x.error})
                continue
            if not (np.isfinite(sc[0]).all() and np.isfinite(sc[1]).all()):  # never emit a NaN probability
                out.append({"file": x.name, "error": f"{x.name}: non-finite model output (NaN or inf) for this input"})
                continue
            res = {"file": x.name, "duration": round(x.duration, 3), **self._describe(sc[1]), "head": head,
                   "precision": self.precision}
            res["windows"] = [] if len(x.windows) == 1 else [
                {"start": s / SAMPLE_RATE, "end": e / SAMPLE_RATE, **self._describe(v)}
                for (s, e), v in zip(x.windows, sc[0], strict=True)]
            out.append(self._abstain(res, head) if abstain else res)
        return out

    def _predict_inputs(self, inputs: list[_Input], enroll=None, same_speaker: bool = False,
                        progress: bool | None = False, abstain: bool = False) -> list[dict]:
        stats = self._enrolment(enroll)
        deferred = same_speaker and stats is None and "speaker" in self.heads
        bar = None
        if progress is not False and len(inputs) > 1:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(inputs), unit="file", file=sys.stderr, disable=None if progress is None else False)
        out: list[dict] = []
        step = max(self.batch_size, 8)  # files encoded together: batches span files, memory stays bounded
        try:
            for i in range(0, len(inputs), step):
                chunk = inputs[i:i + step]
                self._encode_inputs(chunk, keep_own=deferred)
                if not deferred:
                    out.extend(self._results(chunk, stats, abstain=abstain))
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
        if not deferred:
            return out
        # the files are one speaker: their own frames give the statistics when there are enough of them
        good = [x for x in inputs if x.error is None]
        seconds = sum(x.duration for x in good)
        if seconds >= MIN_ENROLL_SECONDS:
            return self._results(inputs, self._combine([o for x in good for o in x.own if o is not None]),
                                 abstain=abstain)
        msg = (f"the {len(good)} readable file(s) of the speaker hold {seconds:.1f} s; estimating the speaker's "
               f"statistics needs at least {MIN_ENROLL_SECONDS:.0f} s")
        if "global" not in self.heads:
            return [{"file": x.name, "error": x.error or f"{msg} (give --enroll)"} for x in inputs]
        return [r if "error" in r else {**r, "note": f"{msg}: the global head answered"}
                for r in self._results(inputs, None, abstain=abstain)]

    def predict(self, audio, sample_rate: int | None = None, name: str | None = None, enroll=None,
                same_speaker: bool = False, abstain: bool = False) -> dict | list[dict]:
        """``audio``: a path, or an array ``(samples,)`` / ``(samples, channels)`` with ``sample_rate``.

        ``enroll``: audio of the same speaker (paths or 16 kHz arrays) or ready statistics from
        :meth:`speaker_statistics`, for the speaker-normalised head; ``same_speaker``: the input itself is
        enrolment (needs ``MIN_ENROLL_SECONDS``). Otherwise the global head answers. ``abstain``: the label is
        ``"unknown"`` when the top probability is below the head's threshold chosen on the validation speakers
        (:func:`serkit.calibration.abstain_threshold`). Raises :class:`SerkitError` for a bad input. A list of
        inputs gives a list of results (see :meth:`predict_many`).
        """
        if isinstance(audio, list):
            return self.predict_many(audio, sample_rate, enroll, same_speaker, abstain=abstain)
        if isinstance(audio, (str, Path)):
            item = _Input(str(audio), lambda: _usable(read_audio(audio, allow_silent=False), str(audio)))
        else:
            signal, name = self._signal(audio, sample_rate, name)
            signal = _usable(signal, name or "<array>")
            item = _Input(name or "<array>", lambda: signal)
        (res,) = self._predict_inputs([item], enroll, same_speaker, abstain=abstain)
        if "error" in res:
            raise SerkitError(res["error"])
        return res

    def predict_file(self, path) -> dict:
        return self.predict(path)

    def predict_files(self, paths, enroll=None, same_speaker: bool = False, progress: bool | None = False,
                      abstain: bool = False) -> list[dict]:
        """Every file; a bad file yields ``{"file", "error"}`` instead of stopping the list.

        ``same_speaker``: the files are one speaker's; with at least ``MIN_ENROLL_SECONDS`` of them together the
        speaker-normalised head answers with their statistics (each file is still encoded once). ``progress``:
        a tqdm bar on stderr (None: only on a terminal).
        """
        inputs = [_Input(str(p), (lambda p=p: _usable(read_audio(p, allow_silent=False), str(p)))) for p in paths]
        return self._predict_inputs(inputs, enroll, same_speaker, progress, abstain=abstain)

    def manifest_results(self, manifest: pd.DataFrame, progress: bool | None = False, abstain: bool = False
                         ) -> list[dict]:
        """One result dict per manifest row (``id`` added). With a ``speaker`` column and a speaker-normalised
        head, the rows of each speaker are taken together as that speaker (``same_speaker``; the global head
        answers speakers with too little audio)."""
        if "speaker" in manifest and "speaker" in self.heads:
            results = {}
            for _, group in manifest.groupby(manifest["speaker"].astype(str)):
                for uid, r in zip(group["id"], self.predict_files(group["path"], same_speaker=True,
                                                                  abstain=abstain), strict=True):
                    results[uid] = r
            predicted = [results[u] for u in manifest["id"]]
        else:
            predicted = self.predict_files(manifest["path"], progress=progress, abstain=abstain)
        return [{"id": str(uid), **r} for r, uid in zip(predicted, manifest["id"], strict=True)]

    def predict_manifest(self, manifest: pd.DataFrame, progress: bool | None = False) -> pd.DataFrame:
        """:meth:`manifest_results` as a table: ``id, file, label, head, error, p_<class>...`` (or attributes)."""
        rows = []
        for r in self.manifest_results(manifest, progress):
            row = {"id": r["id"], "file": r["file"], "label": r.get("label"), "head": r.get("head"),
                   "error": r.get("error")}
            row.update({f"p_{k}": v for k, v in r.get("probabilities", {}).items()})
            row.update(r.get("values", {}))
            rows.append(row)
        return pd.DataFrame(rows)

    def predict_segments(self, path: str | Path, enroll=None, same_speaker: bool = False, vad=None,
                         merge_gap: float = 1.0) -> dict:
        """A long recording: speech found by silero-vad (:mod:`serkit.vad`), each speech segment scored (segments
        longer than ``predict.window_seconds`` are cut into equal pieces no longer than that), adjacent pieces with
        one label merged when at most ``merge_gap`` seconds apart. The file is read in blocks for the voice
        activity detection and piece by piece for scoring, so memory stays bounded for hour-long files.

        ``same_speaker``: the recording is one speaker's; its speech (at least ``MIN_ENROLL_SECONDS``) gives the
        statistics for the speaker-normalised head. Returns ``{"file", "duration", "speech_seconds", "head",
        "label", "probabilities", "segments": [{"start", "end", "label", "probabilities"}, ...]}`` (times in
        seconds; ``values`` instead of a label for regression models).
        """
        from serkit.vad import speech_segments

        path = str(path)
        spans, duration = speech_segments(path, vad)
        pieces = speech_pieces(spans, self.window)

        def load(s: float, e: float) -> np.ndarray:
            return read_audio(path, start=s, stop=e, max_seconds=None)

        stats = self._enrolment(enroll)
        keep = same_speaker and stats is None and "speaker" in self.heads
        if keep:  # the recording enrols its speaker: every piece's features wait for the statistics
            inputs = [_Input(f"{path}@{s:.2f}", (lambda s=s, e=e: load(s, e))) for s, e in pieces]
            self._encode_inputs(inputs, keep_own=True)
            speech = sum(x.duration for x in inputs if x.error is None)
            if speech >= MIN_ENROLL_SECONDS:
                stats = self._combine([o for x in inputs if x.error is None for o in x.own if o is not None])
            head = self._head_for(stats)
            per_piece = [None if sc is None else sc[1] for sc in self._scores(inputs, stats, head)]
        else:  # the head is known: pieces are encoded and scored a batch at a time (bounded memory)
            head = self._head_for(stats)
            per_piece, speech = self.score_pieces(pieces, load, path, stats, head)
        return self.segments_result(path, duration, speech, head, pieces, per_piece, merge_gap)

    def score_pieces(self, pieces: list[tuple[float, float]], load, name: str, stats=None, head: str | None = None
                     ) -> tuple[list[np.ndarray | None], float]:
        """Scores of pieces of one recording: ``pieces`` ``[(start, end), ...]`` (s), ``load(start, end)`` gives a
        piece's 16 kHz float32 ``(samples,)``. Returns ``(per piece: scores (outputs,) or None when it cannot be
        read, seconds of audio scored)``; encoded and scored a batch at a time (bounded memory)."""
        head = head or self._head_for(stats)
        inputs = [_Input(f"{name}@{s:.2f}", (lambda s=s, e=e: load(s, e))) for s, e in pieces]
        per_piece: list[np.ndarray | None] = []
        step = max(self.batch_size, 8)
        for i in range(0, len(inputs), step):
            self._encode_inputs(inputs[i:i + step], keep_own=False)
            per_piece += [None if sc is None else sc[1] for sc in self._scores(inputs[i:i + step], stats, head)]
        return per_piece, sum(x.duration for x in inputs if x.error is None)

    def segments_result(self, name: str, duration: float, speech: float, head: str | None,
                        pieces: list[tuple[float, float]], per_piece: list, merge_gap: float = 1.0) -> dict:
        """The :meth:`predict_segments` dict from scored pieces (``per_piece``: scores or None, as
        :meth:`score_pieces` gives them; ``head`` None: the head for audio without enrolment): merged segments
        and, for classification, the speech-time summary."""
        from serkit.timeline import merge_segments, speech_time_summary

        head = head or self._head_for(None)
        scored = [(p, sc) for p, sc in zip(pieces, per_piece, strict=True) if sc is not None]
        result = {"file": name, "duration": round(duration, 3), "speech_seconds": round(speech, 3), "head": head,
                  "precision": self.precision}
        if not scored:
            why = "no speech found" if not pieces else "no speech segment could be read"
            return {**result, "label": None, "segments": [], "note": why}
        scores = np.stack([v for _, v in scored])
        lengths = np.array([e - s for (s, e), _ in scored])
        result.update(self._describe(np.average(scores, axis=0, weights=lengths)))
        if self.labels.task == "classification":
            result["segments"] = merge_segments([(s, e, v) for (s, e), v in scored], self.labels.classes, merge_gap)
            result.update(speech_time_summary(result["segments"], self.labels.classes))
        else:
            result["segments"] = [{"start": round(s, 3), "end": round(e, 3), **self._describe(v)}
                                  for (s, e), v in scored]
        return result

    def push_to_hub(self, repo_id: str, private: bool = True, token: str | None = None) -> str:
        """Upload this model's folder to the hub as ``repo_id`` (see :func:`push_model`)."""
        if self.model_dir is None:
            raise SerkitError("push_to_hub: this Recognizer was not loaded from a model folder")
        return push_model(self.model_dir, repo_id, private=private, token=token)

    # -- batch calls and embeddings ---------------------------------------------------------------------------

    def _list_inputs(self, items: list, sample_rate: int | None = None) -> list[_Input]:
        """``items``: paths, arrays (with the shared ``sample_rate``) or ``(array, sample_rate)`` pairs."""
        out = []
        for k, x in enumerate(items):
            if isinstance(x, (str, Path)):
                out.append(_Input(str(x), (lambda x=x: _usable(read_audio(x, allow_silent=False), str(x)))))
                continue
            rate = sample_rate
            if isinstance(x, tuple) and len(x) == 2 and np.isscalar(x[1]):
                x, rate = x
            name = f"<array {k}>"
            signal = _usable(self._signal(x, rate, name)[0], name)
            out.append(_Input(name, (lambda signal=signal: signal)))
        return out

    def predict_many(self, items: list, sample_rate: int | None = None, enroll=None,
                     same_speaker: bool = False, abstain: bool = False) -> list[dict]:
        """:meth:`predict` for a list of paths and / or arrays (arrays share ``sample_rate``, or come as
        ``(array, sample_rate)`` pairs); one result per input, in order. Raises :class:`SerkitError` naming every
        input that could not be scored (:meth:`predict_files` reports them per row instead)."""
        results = self._predict_inputs(self._list_inputs(list(items), sample_rate), enroll, same_speaker,
                                       abstain=abstain)
        failed = [r["error"] if r["file"] in r["error"] else f"{r['file']}: {r['error']}" for r in results
                  if "error" in r]
        if failed:
            raise SerkitError("; ".join(failed))
        return results

    def __call__(self, inputs, sample_rate: int | None = None, batch_size: int | None = None,
                 top_k: int | None = None, enroll=None, same_speaker: bool = False) -> list[dict]:
        """Predict one input or a list of them and return a list of results (one per input).

        ``batch_size``: windows per encoder and head batch for this call (default: the Recognizer's);
        ``top_k``: add ``"top_k": [{"label", "score"}, ...]``, the ``top_k`` most probable labels, most probable
        first (classification models). Other arguments as for :meth:`predict`.
        """
        if top_k is not None and (self.labels.task != "classification" or int(top_k) < 1):
            raise SerkitError(f"top_k={top_k!r}: give a positive number, for a classification model "
                              f"(this model's task: {self.labels.task})")
        if batch_size is not None and int(batch_size) < 1:
            raise SerkitError(f"batch_size={batch_size!r}: give a positive number")
        before = self.batch_size
        self.batch_size = int(batch_size) if batch_size is not None else before
        try:
            results = self.predict_many(inputs if isinstance(inputs, list) else [inputs], sample_rate, enroll,
                                        same_speaker)
        finally:
            self.batch_size = before
        if top_k is not None:
            for r in results:
                ranked = sorted(r["probabilities"].items(), key=lambda kv: -kv[1])[:int(top_k)]
                r["top_k"] = [{"label": label, "score": score} for label, score in ranked]
        return results

    def embed(self, audio, sample_rate: int | None = None, enroll=None) -> np.ndarray:
        """The pooled feature vector the model's head receives, as float32 numpy ``(layers, 2 * dim)``: per layer
        the mean over frames, then the standard deviation, of the layers the model uses (16 kHz input).

        ``audio``: a path, an array with ``sample_rate``, or a list of either (then ``(inputs, layers, 2 * dim)``).
        With ``enroll`` (see :meth:`predict`) and a speaker-normalised head, the statistics of the speaker-normalised
        frames; otherwise of the encoder's frames. Inputs longer than ``predict.window_seconds``: the
        length-weighted mean over their windows. Raises :class:`SerkitError` for models that run the encoder
        inside the model (``features.source: waveform``) and for inputs that cannot be read.
        """
        from serkit.cache import pooled_statistics
        from serkit.data.feature_transform import FeatureTransform

        if self._waveform_model:
            raise SerkitError("embed: this model runs its encoder inside the model (features.source: waveform); "
                              "it has no pooled feature vector")
        single = not isinstance(audio, list)
        inputs = self._list_inputs([audio] if single else audio, sample_rate)
        stats = self._enrolment(enroll)
        stats_t = None if stats is None else [torch.from_numpy(np.asarray(a, dtype=np.float32)) for a in stats]
        # the feature stage's layer choice and speaker normalisation, on the pooled statistics of each window
        pooled_stage = FeatureTransform("pooled", self.transform.layers)
        self._encode_inputs(inputs, keep_own=False)
        out = []
        for x in inputs:
            if x.error is not None:
                raise SerkitError(x.error if x.name in x.error else f"{x.name}: {x.error}")
            per_window = []
            for h in x.head_inputs:
                pooled = (h if h.dim() == 2 else pooled_statistics(h.float())).float()
                per_window.append(pooled_stage(pooled[None], *(stats_t or (None, None)))[0].numpy())
            weights = np.array([e - s for s, e in x.windows], dtype=float)
            out.append(np.average(np.stack(per_window), axis=0, weights=weights).astype(np.float32))
            x.head_inputs = []
        return out[0] if single else np.stack(out)


def push_model(model_dir: str | Path, repo_id: str, private: bool = True, token: str | None = None) -> str:
    """Upload a model folder (model card included) to the Hugging Face hub; needs a token (``token=``,
    ``HF_TOKEN`` or ``hf auth login``). Returns the repository URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import get_token

    d = Path(model_dir)
    missing = [n for n in MODEL_FILES if not (d / n).exists()]
    if missing:
        raise SerkitError(f"{d}: not a serkit model folder (missing {', '.join(missing)})")
    token = token or get_token()
    if not token:
        raise SerkitError("push_to_hub: no Hugging Face token (set HF_TOKEN or run `hf auth login`)")
    api = HfApi(token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(folder_path=str(d), repo_id=repo_id, commit_message="serkit model",
                      ignore_patterns=["work/*", ".*"])
    return str(url)


def read_calibration(meta: dict, heads) -> dict:
    """Per head ``{temperature, abstain_threshold, ...}`` from a model folder's meta.json (empty without one);
    a temperature that is not a positive finite number is refused."""
    import math

    out = {}
    for head, cal in (meta.get("calibration") or {}).items():
        if head not in heads or not isinstance(cal, dict):
            continue
        t = cal.get("temperature", 1.0)
        if not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise ValueError(f"calibration.{head}.temperature must be a positive number, got {t!r}")
        out[head] = dict(cal)
    return out


def speech_pieces(spans: list[tuple[float, float]], window: float) -> list[tuple[float, float]]:
    """Speech segments ``[(start, end), ...]`` (s) cut into equal pieces no longer than ``window`` seconds."""
    pieces = []
    for s, e in spans:
        k = max(1, int(np.ceil((e - s) / window - 1e-9)))
        pieces += [(s + (e - s) * i / k, s + (e - s) * (i + 1) / k) for i in range(k)]
    return pieces


def owned_statistics(feats: torch.Tensor, own: tuple[int, int], samples: int) -> tuple[np.ndarray, int] | None:
    """Pooled statistics ``(layers, 2*dim)`` and frame count of the frames of ``feats`` ``(layers, frames, dim)``
    (a piece of ``samples`` samples) that lie in its owned samples ``own = (start, end)``; None when none do."""
    from serkit.cache import pooled_statistics

    a, b = own
    t = feats.shape[1]
    fa = round(a / samples * t)
    fb = max(round(b / samples * t), fa + 1)
    own_feats = feats[:, fa:min(fb, t)]
    return (pooled_statistics(own_feats).numpy(), own_feats.shape[1]) if own_feats.shape[1] else None


def _combine(own: list[tuple[np.ndarray, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Speaker ``(mean, std)`` ``(layers, dim)`` from per-piece pooled statistics and frame counts."""
    from serkit.data.normalize import frame_stats

    return frame_stats(np.stack([p for p, _ in own]), [n for _, n in own])
