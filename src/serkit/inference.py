"""Prediction with a trained model: one interface for a signal, a file, a list of files or a manifest.

``Recognizer.from_pretrained(MODEL_DIR).predict(path_or_array)`` returns the label and class probabilities (or
attribute values) per input. Inputs longer than ``predict.window_seconds`` are scored in windows (hop
``predict.hop_seconds``); the windows are reported and their probabilities averaged.
"""

from __future__ import annotations

import contextlib
import json
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


#: Least audio (seconds) from which :meth:`Recognizer.speaker_statistics` estimates a speaker's statistics.
MIN_ENROLL_SECONDS = 10.0


class Recognizer:
    def __init__(self, model: torch.nn.Module, cfg: dict, labels: LabelMap, encoder_info: dict, device: str = "cpu",
                 precision: str | None = None):
        from serkit.precision import resolve_precision

        self.model = model.eval().to(device)
        self.cfg, self.labels, self.encoder_info, self.device = cfg, labels, encoder_info, device
        #: the encoder's precision (fp32 / bf16): as the model's features were extracted unless asked otherwise
        self.precision = resolve_precision(precision or encoder_info.get("precision", "fp32"), device)
        self._encoder = None
        p = cfg.get("predict", {})
        self.window = float(p.get("window_seconds", 10.0))
        self.hop = float(p.get("hop_seconds", 5.0))
        #: "speaker" when the model was trained on speaker-normalised features (see serkit.data.normalize)
        self.normalize = cfg.get("features", {}).get("normalize", "none")

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, device: str = "cpu", precision: str | None = None) -> Recognizer:
        """Load a ``serkit train`` folder. ``precision`` (auto / fp32 / bf16) of the encoder; default: the one the
        model's training features were extracted in (``encoder.json``; fp32 for models from before it was
        recorded)."""
        from serkit.recipes.base import get_recipe

        d = Path(model_dir)
        for name in ("config.yaml", "model.safetensors", "labels.json", "encoder.json", "meta.json"):
            if not (d / name).exists():
                raise SerkitError(f"{d}: not a serkit model folder (missing {name}); make one with `serkit train`")
        with model_folder_part(d, "config.yaml"):
            cfg = yaml.safe_load((d / "config.yaml").read_text())
            encoder_cfg, source, recipe = cfg["encoder"], cfg["features"]["source"], cfg["recipe"]
        with model_folder_part(d, "labels.json"):
            labels = LabelMap.from_dict(json.loads((d / "labels.json").read_text()))
        with model_folder_part(d, "encoder.json"):
            enc = json.loads((d / "encoder.json").read_text())
        with model_folder_part(d, "meta.json"):
            meta = json.loads((d / "meta.json").read_text())
            spec = ModelSpec(**meta["spec"], extra={"encoder": encoder_cfg})
        model = get_recipe(recipe).build_model(cfg, spec)
        if source == "waveform":
            from serkit.models.encoder_model import EncoderDownstream
            from serkit.train.fit import load_loop_encoder

            encoder, layers = load_loop_encoder(cfg)
            model = EncoderDownstream(encoder, model, layers, cfg["encoder"].get("finetune", False))
        with model_folder_part(d, "model.safetensors"):
            model.load_state_dict(load_file(str(d / "model.safetensors")))
        return cls(model, cfg, labels, enc, device, precision)

    @property
    def encoder(self):
        if self._encoder is None:
            from serkit.encoders import load_encoder
            from serkit.precision import torch_dtype

            self._encoder = load_encoder(self.encoder_info["encoder"], mode=self.encoder_info.get("mode", "native"),
                                         device=self.device, revision=None, dtype=torch_dtype(self.precision))
            rev = self.encoder_info.get("revision")
            if rev and getattr(self._encoder, "revision", rev) not in (rev, "local"):
                import warnings

                warnings.warn(f"model was trained on {self.encoder_info['encoder']} revision {rev}, "
                              f"loaded revision {self._encoder.revision}", stacklevel=2)
        return self._encoder

    def _features(self, signal: np.ndarray) -> torch.Tensor:
        """Float32 ``(layers, frames, dim)``, as the feature cache computes them before storing."""
        from serkit.encoders.runner import encode_signals

        layers = self.encoder_info["layers"]
        ((_, feats),) = list(encode_signals(self.encoder, [("x", signal)], layers))
        return feats

    def speaker_statistics(self, signals: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Feature statistics ``(mean, std)`` ``(layers, dim)`` of one speaker over the frames of ``signals``
        (16 kHz float32), for models trained with ``features.normalize: speaker``. Raises :class:`SerkitError`
        when they hold less than ``MIN_ENROLL_SECONDS`` of audio (too little to estimate a speaker's statistics).
        """
        from serkit.cache import pooled_statistics
        from serkit.data.normalize import frame_stats

        seconds = sum(len(x) for x in signals) / SAMPLE_RATE
        if seconds < MIN_ENROLL_SECONDS:
            raise SerkitError(
                f"this model normalises features per speaker (features.normalize: speaker) and needs at least "
                f"{MIN_ENROLL_SECONDS:.0f} s of the speaker's audio to estimate them, got {seconds:.1f} s: pass "
                f"several files of the speaker together (predict_files / `serkit predict` with all of them) or "
                f"enrolment audio (`enroll=` / `--enroll`)")
        feats = [self._features(x) for x in signals]
        pooled = np.stack([pooled_statistics(f).numpy() for f in feats])
        return frame_stats(pooled, [f.shape[1] for f in feats])

    @torch.no_grad()
    def _score(self, signal: np.ndarray, stats=None) -> np.ndarray:
        amp = None
        if self.cfg["features"]["source"] == "waveform":
            batch = {"waveform": torch.from_numpy(signal)[None].to(self.device),
                     "lengths": torch.tensor([len(signal)], device=self.device)}
            amp = torch.autocast(torch.device(self.device).type, dtype=torch.bfloat16)
        else:
            from serkit.data.normalize import normalize_frames, normalize_pooled

            feats = self._features(signal)
            if self.cfg["features"].get("level") == "pooled":
                from serkit.cache import pooled_statistics

                pooled = pooled_statistics(feats).numpy()
                if stats is not None:
                    pooled = normalize_pooled(pooled, *stats)
                batch = {"pooled": torch.from_numpy(pooled)[None].to(self.device)}
            else:
                # the cache stores frames as float16 (and pools before rounding): match it exactly
                frames = feats.to(torch.float16).numpy()
                if stats is not None:
                    frames = normalize_frames(frames, *stats)
                batch = {"features": torch.from_numpy(frames).float()[None].to(self.device),
                         "frame_mask": torch.ones(1, feats.shape[1], dtype=torch.bool, device=self.device)}
        if amp is not None and self.precision == "bf16":  # the encoder runs inside the model
            with amp:
                out = self.model(batch)
        else:
            out = self.model(batch)
        if self.labels.task == "classification":
            return torch.softmax(out["logits"].float(), -1)[0].cpu().numpy()
        return out["prediction"].float()[0].cpu().numpy()

    def _windows(self, n: int) -> list[tuple[int, int]]:
        w, h = int(self.window * SAMPLE_RATE), int(self.hop * SAMPLE_RATE)
        if n <= w:
            return [(0, n)]
        starts = list(range(0, n - w + 1, h))
        if starts[-1] + w < n:
            starts.append(n - w)
        return [(s, s + w) for s in starts]

    def _signal(self, audio, sample_rate: int | None = None, name: str | None = None) -> tuple[np.ndarray, str]:
        if isinstance(audio, (str, Path)):
            return read_audio(audio, allow_silent=False), str(audio)
        if sample_rate is None:
            raise SerkitError("predict: give sample_rate with an array input")
        return prepare_signal(np.asarray(audio), sample_rate, name=name or "<array>", allow_silent=False), name

    def _enrolment(self, enroll) -> tuple[np.ndarray, np.ndarray] | None:
        """Speaker statistics from ``enroll`` (paths / 16 kHz arrays, or ready ``(mean, std)``); None if unused."""
        if self.normalize == "none" or enroll is None:
            return None
        if isinstance(enroll, tuple) and len(enroll) == 2 and all(isinstance(x, np.ndarray) for x in enroll):
            return enroll
        return self.speaker_statistics([self._signal(x)[0] for x in enroll])

    def predict(self, audio, sample_rate: int | None = None, name: str | None = None, enroll=None) -> dict:
        """``audio``: a path, or an array ``(samples,)`` / ``(samples, channels)`` with ``sample_rate``.

        ``enroll``: for a model trained with speaker normalisation, audio of the same speaker (paths or 16 kHz
        arrays) or ready statistics from :meth:`speaker_statistics`; without it the file itself must hold at
        least ``MIN_ENROLL_SECONDS``.
        """
        signal, name = self._signal(audio, sample_rate, name)
        problem = unusable(signal)  # e.g. under MIN_SECONDS: refused, not labelled
        if problem is not None:
            raise AudioError(name or "<array>", problem)
        stats = self._enrolment(enroll)
        if self.normalize != "none" and stats is None:
            stats = self.speaker_statistics([signal])
        windows = []
        scores = []
        for s, e in self._windows(len(signal)):
            sc = self._score(signal[s:e], stats)
            scores.append((e - s, sc))
            windows.append({"start": s / SAMPLE_RATE, "end": e / SAMPLE_RATE, **self._describe(sc)})
        weights = np.array([n for n, _ in scores], dtype=float)
        agg = np.average(np.stack([sc for _, sc in scores]), axis=0, weights=weights)
        res = {"file": name or "<array>", "duration": len(signal) / SAMPLE_RATE, **self._describe(agg),
               "precision": self.precision}
        res["windows"] = windows if len(windows) > 1 else []
        return res

    def _describe(self, score: np.ndarray) -> dict:
        if self.labels.task == "classification":
            return {"label": self.labels.classes[int(np.argmax(score))],
                    "probabilities": {c: round(float(p), 4) for c, p in zip(self.labels.classes, score, strict=True)}}
        return {"values": {a: round(float(v), 4) for a, v in zip(self.labels.targets, score, strict=True)}}

    def predict_file(self, path) -> dict:
        return self.predict(path)

    def predict_files(self, paths, enroll=None) -> list[dict]:
        """Every file; a bad file yields ``{"file", "error"}`` instead of stopping the list.

        For a model trained with speaker normalisation the files are taken as one speaker: their statistics are
        estimated from all readable files together (or from ``enroll``, see :meth:`predict`).
        """
        paths = [str(p) for p in paths]
        stats = self._enrolment(enroll)
        errors: dict[str, str] = {}
        signals: dict[str, np.ndarray] = {}  # read once, for the statistics and for scoring
        if self.normalize != "none" and stats is None:
            for p in paths:
                try:
                    signals[p] = read_audio(p, allow_silent=False)
                except SerkitError as exc:
                    errors[p] = str(exc)
            try:
                stats = self.speaker_statistics(list(signals.values()))
            except SerkitError as exc:
                return [{"file": p, "error": errors.get(p, str(exc))} for p in paths]
        out = []
        for p in paths:
            try:
                if p in errors:
                    raise SerkitError(errors[p])
                audio = signals.get(p, p)
                out.append(self.predict(audio, SAMPLE_RATE if p in signals else None, name=p, enroll=stats))
            except SerkitError as exc:
                out.append({"file": p, "error": str(exc)})
        return out

    def predict_manifest(self, manifest: pd.DataFrame) -> pd.DataFrame:
        """One row per manifest row; with speaker normalisation, statistics per ``speaker`` column value."""
        if self.normalize != "none" and "speaker" in manifest:
            results = {}
            for _, group in manifest.groupby(manifest["speaker"].astype(str)):
                for uid, r in zip(group["id"], self.predict_files(group["path"]), strict=True):
                    results[uid] = r
            predicted = [results[u] for u in manifest["id"]]
        else:
            predicted = self.predict_files(manifest["path"])
        rows = []
        for r, uid in zip(predicted, manifest["id"], strict=True):
            row = {"id": uid, "file": r["file"], "label": r.get("label"), "error": r.get("error")}
            row.update({f"p_{k}": v for k, v in r.get("probabilities", {}).items()})
            row.update(r.get("values", {}))
            rows.append(row)
        return pd.DataFrame(rows)
