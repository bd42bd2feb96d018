"""Corpus readers. Importing this package registers every reader."""

from serkit.corpora import cremad, emodb, generic, iemocap, msp_improv, msp_podcast, ravdess, savee, tava, tess  # noqa: F401
from serkit.corpora.base import CorpusReader, apply_class_set, available, default_root, get_reader, prepare, register

__all__ = ["CorpusReader", "apply_class_set", "available", "default_root", "get_reader", "prepare", "register"]
