"""Corpus readers. Importing this package registers every reader."""

from serkit.corpora import (  # noqa: F401
    cremad,
    emodb,
    generic,
    iemocap,
    msp_improv,
    msp_podcast,
    ravdess,
    savee,
    tava,
    tess,
)
from serkit.corpora.base import (
    CorpusReader,
    apply_class_set,
    available,
    default_root,
    get_reader,
    prepare,
    register,
)

__all__ = ["CorpusReader", "apply_class_set", "available", "default_root", "get_reader", "prepare", "register"]
