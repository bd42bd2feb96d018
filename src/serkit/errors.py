"""Exceptions with messages that name the file or key and the problem."""


class SerkitError(Exception):
    """Base class of serkit errors."""


class AudioError(SerkitError):
    """A file that cannot be used as audio input. ``path`` names it, ``problem`` says why."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ManifestError(SerkitError):
    """A manifest that lacks columns or holds bad values."""


class CorpusError(SerkitError):
    """A corpus tree that does not match its documented layout."""


class LeakageError(SerkitError):
    """A speaker-independent fold whose test speakers also appear in training or validation."""


class ConfigError(SerkitError):
    """A configuration with a wrong key or value; the message names the key."""


class CheckpointError(SerkitError):
    """A checkpoint or tensor file that cannot be loaded safely: not plain tensors (possibly crafted to run code
    when unpickled), truncated, or from another model."""


#: Import name (top level) -> (distribution to name, the serkit extra that installs it). A command that imports one
#: of these without it installed ends with one line naming the extra (see :func:`missing_extra`).
EXTRA_OF_MODULE = {
    "lightning": ("lightning", "train"), "pytorch_lightning": ("lightning", "train"),
    "lightning_fabric": ("lightning", "train"), "torchmetrics": ("lightning", "train"),
    "sklearn": ("scikit-learn", "train"), "matplotlib": ("matplotlib", "train"), "pyarrow": ("pyarrow", "train"),
    "fastapi": ("fastapi", "serve"), "uvicorn": ("uvicorn", "serve"), "multipart": ("python-multipart", "serve"),
    "python_multipart": ("python-multipart", "serve"),
    "onnx": ("onnx", "export"), "onnxscript": ("onnxscript", "export"), "onnxruntime": ("onnxruntime", "export"),
    "peft": ("peft", "finetune"), "faiss": ("faiss-cpu", "recipes"),
    "tensorboard": ("tensorboard", "tracking"), "mlflow": ("mlflow-skinny", "tracking"),
}


def missing_extra(exc: ImportError) -> str | None:
    """The one-line message for an import of an optional dependency that is not installed, e.g. ``needs
    scikit-learn (the train extra): pip install 'serkit[train]'``; None when ``exc`` is not about one of them.
    Covers ``ModuleNotFoundError`` (``exc.name``) and pandas' "Missing optional dependency 'pyarrow'"."""
    name = getattr(exc, "name", None) or ""
    if not name and "Missing optional dependency" in str(exc):
        name = str(exc).split("'")[1] if str(exc).count("'") >= 2 else ""
    found = EXTRA_OF_MODULE.get(name.partition(".")[0])
    if found is None:
        return None
    dist, extra = found
    return f"needs {dist}, which the {extra} extra installs: pip install 'serkit[{extra}]'"
