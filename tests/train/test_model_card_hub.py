"""A trained model's card is ready for the Hugging Face hub: its YAML header has the fields the hub reads, and its
"Use" section names no local path."""

from __future__ import annotations

import yaml

from serkit.model_card import describe_model, render_model_card


def _front(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def _use_section(card: str) -> str:
    return card.split("## Use")[1].split("\n## ")[0]


def test_the_card_header_has_the_hub_fields(model_dir):
    info = describe_model(model_dir)
    front = _front(render_model_card({**info, "corpus": "ravdess"}))
    assert front["library_name"] == "serkit" and front["pipeline_tag"] == "audio-classification"
    assert front["license"] == "cc-by-nc-sa-4.0" and front["language"] == ["en"] and front["datasets"] == ["ravdess"]
    assert {"recall", "accuracy", "f1"} <= set(front["metrics"]) and "speech-emotion-recognition" in front["tags"]
    assert front["base_model"] == "fbank-40"
    # two corpora of two languages, one without an open licence: both languages, licence "other"
    both = _front(render_model_card({**info, "corpus": ["ravdess", "emodb"]}))
    assert both["language"] == ["de", "en"] and both["license"] == "other" and both["datasets"] == ["ravdess", "emodb"]
    # one's own table: no dataset or language to name
    own = _front(render_model_card(info))
    assert own["license"] == "other" and "datasets" not in own and "language" not in own


def test_the_use_section_names_no_local_path(model_dir):
    card = render_model_card(describe_model(model_dir.resolve()))
    use = _use_section(card)
    assert str(model_dir.parent) not in use and "serkit predict MODEL clip.wav" in use
    assert f"OWNER/{model_dir.name}" in use and 'Recognizer.from_pretrained("MODEL")' in use
