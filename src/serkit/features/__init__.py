"""Encoder features on disk: the store (:mod:`~serkit.features.store`, its writers' lock in
:mod:`~serkit.features.locking`), per-utterance pooled statistics (:mod:`~serkit.features.pooling`), extraction of a
manifest into a store (:mod:`~serkit.features.extraction`) and the ``serkit extract`` command
(:mod:`~serkit.features.cli`). The package imports none of them, so reading a store never loads an encoder."""
