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
