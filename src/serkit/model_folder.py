"""The model folder that ``serkit train`` writes and every predictor reads: its files, where it comes from (a local
folder or a hub snapshot), and :class:`ModelFolder`, which reads and checks it in one place.

Files: ``config.yaml`` (the resolved training config), ``labels.json`` (classes or targets), ``encoder.json``
(which encoder, layers and precision the features came from; ``views`` for several encoders), ``meta.json`` (the
heads' files, the model spec, calibration), one ``*.safetensors`` per head, and ``model.onnx`` after
``serkit export``. A folder may come from a stranger: nothing is unpickled, every file is checked before use.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from serkit.config_defaults import DEFAULTS, with_defaults
from serkit.data.labels import LabelMap
from serkit.errors import SerkitError

#: Files of a model folder that every model has.
MODEL_FILES = ("config.yaml", "model.safetensors", "labels.json", "encoder.json", "meta.json")
#: The graph ``serkit export --format onnx`` writes into the folder.
ONNX_FILE = "model.onnx"
#: The graph's metadata key: a JSON record of heads, inputs and calibration.
METADATA_KEY = "serkit"


@contextlib.contextmanager
def model_folder_part(model_dir: Path, name: str):
    """Reading file ``name`` of a model folder: a garbled or crafted file (bad JSON / YAML, missing fields,
    weights of other shapes) is a one-line SerkitError naming it, not a traceback."""
    from safetensors import SafetensorError

    try:
        yield
    except (ValueError, KeyError, TypeError, RuntimeError, AttributeError, yaml.YAMLError, SafetensorError) as exc:
        why = "; ".join(ln.strip() for ln in str(exc).strip().splitlines()[:2])[:300]
        raise SerkitError(f"{model_dir / name}: not a usable serkit model file ({type(exc).__name__}: {why})"
                          ) from None


@dataclass(frozen=True)
class ModelFolder:
    """A model folder, read and checked: ``cfg`` (config.yaml), ``labels``, ``encoder`` (encoder.json), ``meta``
    (meta.json; empty when absent and not required), ``head_files`` (head name -> weights file inside the folder)
    and ``calibration`` (head -> ``{temperature, abstain_threshold, ...}``)."""

    path: Path
    cfg: dict
    labels: LabelMap
    encoder: dict
    meta: dict
    head_files: dict
    calibration: dict

    @classmethod
    def read(cls, model_dir: str | Path, required: tuple[str, ...] = MODEL_FILES) -> ModelFolder:
        """Read ``model_dir``; a missing ``required`` file or a garbled one is a one-line :class:`SerkitError`."""
        d = Path(model_dir)
        for name in required:
            if not (d / name).exists():
                raise SerkitError(f"{d}: not a serkit model folder (missing {name}); make one with `serkit train`")
        with model_folder_part(d, "config.yaml"):
            cfg = with_defaults(yaml.safe_load((d / "config.yaml").read_text()))
            normalize = cfg["features"]["normalize"]
        with model_folder_part(d, "labels.json"):
            labels = LabelMap.from_dict(json.loads((d / "labels.json").read_text()))
        with model_folder_part(d, "encoder.json"):
            enc = json.loads((d / "encoder.json").read_text())
        meta, files, calibration = {}, {}, {}
        if (d / "meta.json").exists():
            with model_folder_part(d, "meta.json"):
                meta = json.loads((d / "meta.json").read_text())
                files = dict(meta.get("heads") or {"speaker" if normalize == "speaker" else "global":
                                                   "model.safetensors"})
                calibration = read_calibration(meta, files)
        folder = cls(d, cfg, labels, enc, meta, files, calibration)
        folder.check()
        return folder

    def check(self) -> None:
        """Before anything is built from the folder (possibly from a stranger): every head file named by
        ``meta.json`` lies inside the folder, the labels fit the head's output count, and ``encoder.json`` holds
        values of the types serkit wrote (an encoder id, integer layers, a known mode)."""
        d, enc = self.path, self.encoder
        records = enc.get("views") if isinstance(enc, dict) and "views" in enc else {"": enc}
        for view, rec in (records.items() if isinstance(records, dict) else [("", records)]):
            where = f"{d / 'encoder.json'}" + (f" (view {view})" if view else "")
            layers = rec.get("layers") if isinstance(rec, dict) else None
            if not isinstance(rec, dict) or not isinstance(rec.get("encoder"), str) or not (
                    layers is None or (isinstance(layers, list) and all(type(x) is int for x in layers))) or \
                    rec.get("mode", DEFAULTS["encoder"]["mode"]) not in ("native", "padded"):
                raise SerkitError(f"{where}: not a usable serkit model file (expects an 'encoder' id, integer "
                                  f"'layers' and a mode native / padded)")
        root = d.resolve()
        for head, file in self.head_files.items():
            if not isinstance(file, str) or not (d / file).resolve().is_relative_to(root):
                raise SerkitError(f"{d / 'meta.json'}: the {head} head file {file!r} is not inside the model "
                                  f"folder; refused")
        names = self.labels.classes if self.labels.task == "classification" else self.labels.targets
        outputs = (self.meta.get("spec") or {}).get("num_outputs")
        if outputs is not None and outputs != len(names):
            kind = "classes" if self.labels.task == "classification" else "targets"
            raise SerkitError(f"{d / 'labels.json'}: {len(names)} {kind} but meta.json's head has {outputs} "
                              f"outputs; not a consistent serkit model folder")


def read_calibration(meta: dict, heads) -> dict:
    """Per head ``{temperature, abstain_threshold, ...}`` from a model folder's meta.json (empty without one);
    a temperature that is not a positive finite number is refused."""
    out = {}
    for head, cal in (meta.get("calibration") or {}).items():
        if head not in heads or not isinstance(cal, dict):
            continue
        t = cal.get("temperature", 1.0)
        if not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise ValueError(f"calibration.{head}.temperature must be a positive number, got {t!r}")
        out[head] = dict(cal)
    return out


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
