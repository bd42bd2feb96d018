"""serkit: a speech emotion recognition toolkit.

Data flows one way: corpus -> manifest -> folds -> encoder -> cache -> model -> results.
"""

from serkit.constants import SAMPLE_RATE
from serkit.version import __version__

__all__ = ["SAMPLE_RATE", "Recognizer", "__version__"]


def __getattr__(name: str):
    # Lazy import so that `import serkit` stays light (no torch import for `serkit prepare`).
    if name == "Recognizer":
        from serkit.inference import Recognizer

        return Recognizer
    raise AttributeError(f"module 'serkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
