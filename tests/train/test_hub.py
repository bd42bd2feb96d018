"""Model folders through the Hugging Face hub: hub ids offline and (mocked) online, push_to_hub."""

from __future__ import annotations

import huggingface_hub
import pytest

from serkit.errors import SerkitError
from serkit.inference import Recognizer
from serkit.model_folder import push_model


def test_a_hub_id_offline_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SerkitError) as e:
        Recognizer.from_pretrained("nobody-serkit/no-such-model", device="cpu")
    msg = str(e.value)
    assert "not in the local hub cache" in msg and "\n" not in msg
    with pytest.raises(SerkitError, match="no such model folder"):
        Recognizer.from_pretrained("no/such/folder", device="cpu")


def test_a_hub_id_loads_its_snapshot(spk_model, monkeypatch):
    asked = {}

    def snapshot(repo_id, revision=None, **kw):
        asked.update(repo_id=repo_id, revision=revision)
        return str(spk_model)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    rec = Recognizer.from_pretrained("team/emodb-ser", device="cpu", revision="v1")
    assert asked == {"repo_id": "team/emodb-ser", "revision": "v1"} and set(rec.heads) == {"speaker", "global"}


def test_push_to_hub_uploads_the_folder_with_a_token(spk_model, monkeypatch):
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("token", token))

        def create_repo(self, repo_id, private=True, exist_ok=False):
            calls.append(("create", repo_id, private, exist_ok))
            return f"https://hub.example/{repo_id}"

        def upload_folder(self, folder_path, repo_id, **kw):
            calls.append(("upload", folder_path, repo_id))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    rec = Recognizer.from_pretrained(spk_model, device="cpu")
    assert rec.push_to_hub("team/emodb-ser", token="hf_test").endswith("team/emodb-ser")
    assert calls == [("token", "hf_test"), ("create", "team/emodb-ser", True, True),
                     ("upload", str(spk_model), "team/emodb-ser")]
    import huggingface_hub.utils as hub_utils

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(hub_utils, "get_token", lambda: None)
    with pytest.raises(SerkitError, match="no Hugging Face token"):
        push_model(spk_model, "team/emodb-ser")
