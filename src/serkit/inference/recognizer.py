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

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file

from serkit.audio import read_audio
from serkit.errors import SerkitError
from serkit.inference.windows import WindowScorer, _Input, _usable, resolve_device, speech_pieces
from serkit.model_folder import ModelFolder, model_folder_part, push_model, resolve_model_dir
from serkit.models.registry import ModelSpec


class Recognizer(WindowScorer):
    """A trained model ready to predict. Build it with :meth:`from_pretrained`.

    ``heads``: ``{"speaker": module, "global": module}`` (either may be missing); ``device``: see
    :func:`resolve_device`; ``batch_size``: windows per encoder and head batch.
    """

    @classmethod
    def from_pretrained(cls, model: str | Path | None = None, device: str | torch.device = "auto",
                        batch_size: int = 16, revision: str | None = None, precision: str | None = None,
                        backend: str = "torch") -> Recognizer:
        """Load a model folder from ``serkit train`` or a hub id ``owner/name`` (see
        :func:`~serkit.model_folder.resolve_model_dir`); no ``model``: the model that ships inside serkit
        (:mod:`serkit.shipped_model`). ``precision`` (auto / fp32 / bf16) of the encoder; default: the one the
        model's training features were extracted in (``encoder.json``; fp32 for models from before it was
        recorded). ``backend``: ``"torch"``, or ``"onnx"`` for the graph ``serkit export MODEL --format onnx``
        wrote, run by onnxruntime (:class:`~serkit.inference.onnx.OnnxRecognizer`; float32, CPU unless ``device``
        is cuda). The class that answers is the most specific one whose :meth:`loads` accepts the folder."""
        if backend not in ("torch", "onnx"):
            raise SerkitError(f"backend {backend!r}: expected 'torch' or 'onnx'")
        if model is None:
            from serkit.shipped_model import default_model_dir

            model = default_model_dir()
        if backend == "torch":
            device = resolve_device(device)  # an unusable device fails before anything is loaded
        d = resolve_model_dir(model, revision)
        chosen = next((sub for sub in _subclasses(Recognizer) if sub.loads(d, backend)), Recognizer)
        if not chosen.loads(d, backend):
            raise SerkitError(f"{d}: no {backend} predictor for this model folder")
        return chosen.from_folder(d, device=device, batch_size=batch_size, precision=precision)

    @classmethod
    def loads(cls, model_dir: Path, backend: str) -> bool:
        """Whether this class predicts with the model folder ``model_dir`` on ``backend``."""
        return backend == "torch"

    @classmethod
    def from_folder(cls, model_dir: Path, device: str | torch.device = "auto", batch_size: int = 16,
                    precision: str | None = None) -> Recognizer:
        """This predictor over the model folder ``model_dir`` (read and checked by :class:`ModelFolder`)."""
        folder = ModelFolder.read(model_dir)
        rec = cls(build_heads(folder), folder.cfg, folder.labels, folder.encoder, resolve_device(device),
                  batch_size, model_dir=folder.path, precision=precision, calibration=folder.calibration)
        if folder.cfg["features"]["source"] != "waveform" and "views" not in folder.encoder:
            rec.feature_width = int(folder.meta["spec"]["hidden_size"])
        return rec



    # -- prediction -----------------------------------------------------------------------------------------


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
        if seconds >= self.min_enroll_seconds:
            return self._results(inputs, self._combine([o for x in good for o in x.own if o is not None]),
                                 abstain=abstain)
        msg = (f"the {len(good)} readable file(s) of the speaker hold {seconds:.1f} s; estimating the speaker's "
               f"statistics needs at least {self.min_enroll_seconds:.0f} s")
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
            if speech >= self.min_enroll_seconds:
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
        from serkit.data.feature_transform import FeatureTransform
        from serkit.features.pooling import pooled_statistics

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


def build_heads(folder: ModelFolder) -> dict[str, torch.nn.Module]:
    """The heads of a model folder, built by its recipe from the saved spec and loaded from their weights (with
    the encoder in the loop for ``features.source: waveform``)."""
    from serkit.recipes.catalog import get_recipe

    cfg, d = folder.cfg, folder.path
    heads = {}
    for head, file in folder.head_files.items():
        if not (d / file).exists():
            raise SerkitError(f"{d}: not a serkit model folder (missing {file}, the {head} head)")
        with model_folder_part(d, "meta.json"):
            # per head, what build_model needs beyond the config (e.g. IF-MVSE's views, score sets and weights)
            extra = {**(folder.meta.get("head_extra") or {}).get(head, {}), "encoder": cfg["encoder"]}
            spec = ModelSpec(**folder.meta["spec"], extra=extra)
        module = get_recipe(cfg["recipe"]).build_model(cfg, spec)
        if cfg["features"]["source"] == "waveform":
            from serkit.encoders import load_encoder, parse_layers
            from serkit.models.encoder_model import EncoderDownstream

            e = cfg["encoder"]
            encoder = load_encoder(e["id"], mode=e["mode"], eval_mode=True, level_db=e.get("level_db"))
            layers, _ = parse_layers(e["layers"], encoder.num_layers)
            module = EncoderDownstream(encoder, module, layers, e.get("finetune", False))
        with model_folder_part(d, file):
            module.load_state_dict(load_file(str(d / file)))
        heads[head] = module
    return heads


def _subclasses(cls: type) -> list[type]:
    """Every subclass of ``cls`` (as imported), the most derived first."""
    out = []
    for sub in cls.__subclasses__():
        out += _subclasses(sub) + [sub]
    return out
