"""The window engine under every predictor: encode a signal's windows once, keep the speaker's feature statistics
from the same frames, apply the feature stage and score a head, calibrated.

:class:`WindowScorer` holds the heads, the feature stage (:class:`~serkit.data.feature_transform.FeatureTransform`)
and the encoder; :class:`~serkit.inference.recognizer.Recognizer` adds the public calls (a signal, files, a
manifest, a recording, batches). Its seams for other backends are :meth:`WindowScorer._encode`,
:meth:`WindowScorer._combine`, :meth:`WindowScorer._ready_statistics` and :meth:`WindowScorer._score`.

Nothing here imports Lightning or matplotlib.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from serkit.audio import prepare_signal, read_audio, unusable
from serkit.config_defaults import DEFAULTS, UNRECORDED_PRECISION, with_defaults
from serkit.constants import SAMPLE_RATE
from serkit.data.labels import LabelMap
from serkit.errors import AudioError, SerkitError

#: Least audio (seconds) from which :meth:`WindowScorer.speaker_statistics` estimates a speaker's statistics.
MIN_ENROLL_SECONDS = 10.0


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
    """The encoder a model folder records (``{encoder, mode, revision, level_db}``), loaded as found offline or on
    the hub, with a warning when the loaded revision is not the one the model was trained on."""
    from serkit.encoders import load_encoder

    encoder = load_encoder(info["encoder"], mode=info.get("mode", DEFAULTS["encoder"]["mode"]), device=device,
                           revision=None, dtype=dtype, level_db=info.get("level_db"))
    rev = info.get("revision")
    if rev and getattr(encoder, "revision", rev) not in (rev, "local"):
        import warnings

        warnings.warn(f"model was trained on {info['encoder']} revision {rev}, loaded revision "
                      f"{encoder.revision}", stacklevel=3)
    return encoder


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
    from serkit.features.pooling import pooled_statistics

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


class WindowScorer:
    """Windows in, per-window head scores out: the heads, the feature stage and the encoder of a trained model.

    ``heads``: ``{"speaker": module, "global": module}`` (either may be missing); ``device``: see
    :func:`resolve_device`; ``batch_size``: windows per encoder and head batch.
    """

    #: least audio (seconds) from which the speaker's statistics are estimated (:data:`MIN_ENROLL_SECONDS`)
    min_enroll_seconds: float = MIN_ENROLL_SECONDS

    def __init__(self, heads: dict[str, torch.nn.Module] | torch.nn.Module, cfg: dict, labels: LabelMap,
                 encoder_info: dict, device: str | torch.device = "cpu", batch_size: int = 16,
                 model_dir: Path | None = None, precision: str | None = None, calibration: dict | None = None):
        from serkit.precision import resolve_precision

        cfg = with_defaults(cfg)
        normalize = cfg["features"]["normalize"] or "none"
        if isinstance(heads, torch.nn.Module):
            heads = {"speaker" if normalize == "speaker" else "global": heads}
        self.device = resolve_device(device)
        self.heads = {h: m.eval().to(self.device) for h, m in heads.items()}
        self.cfg, self.labels, self.encoder_info = cfg, labels, encoder_info
        self.batch_size = max(1, int(batch_size))
        #: the encoder's precision (fp32 / bf16): as the model's features were extracted unless asked otherwise
        self.precision = resolve_precision(
            precision or encoder_info.get("precision", UNRECORDED_PRECISION["features"]), self.device)
        self.model_dir = model_dir
        #: the feature width the heads were trained on (meta.json ``spec.hidden_size``; None: not checked)
        self.feature_width: int | None = None
        #: per head ``{temperature, abstain_threshold, abstain_target}`` fitted on the validation speakers
        #: (meta.json ``calibration``; :mod:`serkit.calibration`): probabilities are ``softmax(logits / T)``
        self.calibration = dict(calibration or {})
        self._encoder = None
        self.window = float(cfg["predict"]["window_seconds"])
        self.hop = float(cfg["predict"]["hop_seconds"])
        #: "speaker" when the model was trained on speaker-normalised features (see serkit.data.normalize)
        self.normalize = normalize
        #: the model normalises encoder outputs itself (encoder blocks in the loop): it gets raw features plus the
        #: speaker statistics (``speaker_mean`` / ``speaker_std``) instead of normalised features
        self.stats_in_batch = any(bool(getattr(m, "takes_speaker_stats", False)) for m in self.heads.values()) or \
            cfg["features"]["source"] == "waveform"
        #: the feature stage (layer choice, speaker normalisation, frame steps) as the training datasets applied it;
        #: a model with encoder blocks in the loop gets every stored layer and normalises them itself
        from serkit.data.feature_transform import FeatureTransform

        stored = len(encoder_info["layers"]) if "layers" in encoder_info and not self.stats_in_batch else None
        self.transform = FeatureTransform.from_options(cfg["features"], stored)

    @property
    def layer_index(self) -> list[int] | None:
        """Positions in the stored layers the heads read (None: all)."""
        return self.transform.layers

    @property
    def model(self) -> torch.nn.Module:
        """The main head (speaker-normalised when there is one)."""
        return self.heads.get("speaker", self.heads.get("global"))

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
        from serkit.encoders.runner import encode_signals
        from serkit.features.pooling import pooled_statistics

        owned = {}

        def items():
            for key, signal, own in pieces:
                owned[key] = (own, len(signal))
                yield key, signal

        pooled_level = self.cfg["features"]["level"] == "pooled"
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
        if seconds < self.min_enroll_seconds:
            raise SerkitError(
                f"enrolment holds {seconds:.1f} s of audio; estimating a speaker's feature statistics needs at "
                f"least {self.min_enroll_seconds:.0f} s (several files of the speaker)")
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

    def _head_for(self, stats) -> str:
        if stats is not None and "speaker" in self.heads:
            return "speaker"
        if "global" in self.heads:
            return "global"
        raise SerkitError(
            f"this model has only a speaker-normalised head (features.normalize: speaker) and needs at least "
            f"{self.min_enroll_seconds:.0f} s of the speaker's audio: give enrolment audio (`enroll=` / `--enroll`) or "
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
