"""HCLD recipe: Hybrid Contrastive Learning Decoupling (Li et al., ICASSP 2025) for SER + speaker verification.

Model ``hcld``: :mod:`serkit.models.hcld`; speaker CE ``hcld_speaker_ce``: :mod:`serkit.losses.known_speaker_ce`;
label texts: :mod:`serkit.models.label_text`.

Recipe ``hcld`` (config ``recipe: hcld``):

- ``train_sampler``: :class:`serkit.data.pairs.PairBatchSampler` over the training fold's encoded emotion and
  speaker labels, so every batch holds ICLD positive pairs (same speaker, different emotion) and negative pairs
  (different speaker, same emotion). ``recipe_options: {pair_sampler: false}`` falls back to a plain shuffle;
  ``min_pos`` / ``min_neg`` (default 1 each).
- ``objective_context``: ``label_embeddings`` (text embeddings of ``labels.classes``, computed once per process
  and cached on disk by :func:`serkit.models.label_text.embed_label_texts`; model ``roberta-base`` as in the
  paper, or the ``text_model`` of the ``lcl`` term; offline it falls back to the packaged all-MiniLM-L6-v2) and
  ``feature_dim`` (``model.dim``) for the ``lcl`` term.
- ``extra_test_metrics``: the base recipe's ``speaker_eer`` (cosine scoring of X_s over all test-utterance pairs:
  under speaker-independent protocols the test speakers are unseen, so the closed-set speaker head cannot be
  scored) and ``speaker_wa``/``speaker_ua`` of the speaker head only when the fold shares speakers (e.g.
  ``protocol: {name: random}``); plus ``emotion_feature_eer``, the same EER on X_e (higher = less speaker
  information left in the emotion features, a direct measure of decoupling).

The full HCLD objective, ``L = L_task + L_CLD + L_SCL + L_Label`` (all weights 1 in the paper)::

    objective:
      - {name: cross_entropy}                                  # L_emo
      - {name: hcld_speaker_ce}                                # L_spe (unknown / unseen speakers ignored)
      - {name: icld, margin: 0.5, hinge: text}                 # L_CLD (positives on X_e, negatives on X_s)
      - {name: supcon, feature_key: emotion_features}          # L_SCL
      - {name: lcl}                                            # L_Label (label_embeddings, feature_dim filled in)

ICLD hinge: the default ``hinge: text`` is ``max(0, cos - margin)^2`` on negative (different speaker, same
emotion) pairs of X_s, what the paper's text says ("similarity less than a preset threshold"); ``hinge: formula``
is the printed equation ``max(0, margin - cos)^2``. Margin 0.5 is ours (the paper gives none).

Table II baselines (emotion only, orthogonality decoupling, HCLD, without SupCon, without LCL, per extractor): the
``table2`` grid of ``configs/ablations/hcld.yaml``, run by ``serkit ablate CONFIG --out DIR --table table2``.
"""

from __future__ import annotations

from dataclasses import dataclass

from serkit.data.labels import LabelMap
from serkit.models.label_text import label_text_embeddings, label_words
from serkit.models.registry import ModelSpec
from serkit.recipes.base import Recipe, register_recipe


@dataclass(frozen=True)
class HCLDOptions:
    """HCLD's ``recipe_options``. ``pair_sampler``: batches that guarantee ``min_pos`` positive pairs (same emotion,
    another speaker) and ``min_neg`` negative pairs; false: a plain shuffle. ``text_model``: the label-text encoder
    of the ``lcl`` term (a term's own ``text_model`` wins); ``label_text``: class -> word; ``text_cache_dir``: where
    label-text embeddings are kept."""

    pair_sampler: bool = True
    min_pos: int = 1
    min_neg: int = 1
    text_model: str = "roberta-base"
    label_text: dict | None = None
    text_cache_dir: str | None = None


@register_recipe("hcld")
class HCLDRecipe(Recipe):
    """The HCLD recipe (module docstring); ``recipe_options``: :class:`HCLDOptions`."""

    options_class = HCLDOptions

    def objective_context(self, cfg: dict, labels: LabelMap, train_enc: dict, spec: ModelSpec) -> dict:
        ctx = super().objective_context(cfg, labels, train_enc, spec)
        lcl_terms = [t for t in cfg["objective"] if t.get("name") == "lcl" and "label_embeddings" not in t]
        if lcl_terms:
            o = self.options(cfg)
            text_model = lcl_terms[0].get("text_model", o.text_model)
            words = label_words(list(labels.classes), o.label_text)
            ctx["label_embeddings"] = label_text_embeddings(words, text_model, o.text_cache_dir)
        ctx["feature_dim"] = int(cfg["model"].get("dim", 256))
        return ctx

    def train_sampler(self, cfg: dict, dataset, seed: int):
        o = self.options(cfg)
        if not o.pair_sampler:
            return super().train_sampler(cfg, dataset, seed)
        import warnings

        from serkit.data.pairs import PairBatchSampler

        bs = int(cfg["train"]["batch_size"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "no pair of a kind" on degenerate data: the guarantee is dropped
            sampler = PairBatchSampler(dataset.enc["emotion"], dataset.enc["speaker"], batch_size=bs,
                                       min_pos=o.min_pos, min_neg=o.min_neg,
                                       seed=seed, drop_last=len(dataset) > bs)
        return ("batch_sampler", sampler)

    def extra_test_metrics(self, outputs: dict, rows, labels: LabelMap, fold) -> dict:
        out = super().extra_test_metrics(outputs, rows, labels, fold)
        if "emotion_features" in outputs:
            from serkit.verification import speaker_eer

            spk = rows["speaker"].astype(str).to_numpy()
            try:
                e = speaker_eer(outputs["emotion_features"], spk)
                out["emotion_feature_eer"] = float(e[0] if isinstance(e, tuple) else e)
            except ValueError:  # a single test speaker (or one utterance each): no target/non-target trials
                pass
        return out
