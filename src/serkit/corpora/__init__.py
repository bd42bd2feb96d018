"""Corpus readers. Importing this package registers every reader (through :mod:`serkit.corpora.catalog`)."""

from serkit.corpora.base import CorpusReader, register
from serkit.corpora.catalog import apply_class_set, available, default_root, get_reader, prepare

__all__ = ["CorpusReader", "apply_class_set", "available", "default_root", "get_reader", "prepare", "register"]
