"""Hub round trips through the real `huggingface_hub` client and a local Hub server."""

from __future__ import annotations

import hashlib
import time
import types

import huggingface_hub.hf_api
import huggingface_hub.utils._http
import numpy as np
import pytest
import torch
import transformers.utils.hub
from helpers import tiny_vit
from hub_server import HubServer
from huggingface_hub import HfApi, ModelCard, constants
from PIL import Image
from transformers import AutoModelForImageClassification, ViTImageProcessorPil, pipeline

from hf_afr import AFRPruner, PrunerConfig
from hf_afr.checkpoint.formats import COMPACT_WEIGHTS_NAME
from hf_afr.checkpoint.masks_file import MASKS_NAME

FIXTURE_TOKEN = "hf_fixture_token_not_a_secret"


def _point_clients_at(monkeypatch, endpoint: str, cache_dir: str) -> None:
    """Send every Hub call to `endpoint` and download into `cache_dir`.

    `huggingface_hub` reads its settings into `constants` at import; the default `HfApi`
    instance and transformers' shared one captured the endpoint when they were created.
    """
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(
        constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        endpoint + "/{repo_id}/resolve/{revision}/{filename}",
    )
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", endpoint)
    monkeypatch.setattr(transformers.utils.hub, "_hf_api", None)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", cache_dir)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setenv("HF_TOKEN", FIXTURE_TOKEN)  # never read a token saved on this machine


@pytest.fixture
def hub(monkeypatch, tmp_path):
    server = HubServer().start()
    _point_clients_at(monkeypatch, server.endpoint, str(tmp_path / "hf-cache"))
    yield server
    if server.running:
        server.stop()
    assert not server.unknown_requests, server.unknown_requests


@pytest.fixture(scope="module")
def pruner() -> AFRPruner:
    pruner = AFRPruner(tiny_vit(patch_size=4), PrunerConfig(method="magnitude", sparsity=0.9))
    pruner.prune(show_progress=False)
    return pruner


def _image() -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _check_downloads(pruner: AFRPruner, dense_repo: str, compact_repo: str) -> None:
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = pruner.model.eval()(pixel_values=x).logits
        for repo in (dense_repo, compact_repo):
            model = AutoModelForImageClassification.from_pretrained(repo).eval()
            assert torch.equal(model(pixel_values=x).logits, expected), repo
            restored = AFRPruner.from_pretrained(repo)
            assert restored.config == pruner.config
            assert all(torch.equal(restored.masks[k], pruner.masks[k]) for k in pruner.masks)
    classifier = pipeline("image-classification", model=dense_repo)
    predictions = classifier(_image(), top_k=3)
    pixel_values = classifier.image_processor(_image(), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        probs = pruner.model(pixel_values=pixel_values).logits.softmax(-1)[0]
    assert predictions[0]["label"] == pruner.model.config.id2label[int(probs.argmax())]
    assert predictions[0]["score"] == pytest.approx(float(probs.max()), abs=1e-6)


def test_round_trip_online_then_offline(hub, pruner, monkeypatch, tmp_path):
    processor = ViTImageProcessorPil(size={"height": 32, "width": 32})
    dense = pruner.push_to_hub("tester/tiny-afr-dense", image_processor=processor)
    compact = pruner.push_to_hub("tester/tiny-afr-compact", checkpoint_format="compact")
    assert dense.oid == hub.repos["tester/tiny-afr-dense"].branches["main"]
    for repo, format_files in (
        ("tester/tiny-afr-dense", {"model.safetensors", MASKS_NAME, "preprocessor_config.json"}),
        ("tester/tiny-afr-compact", {COMPACT_WEIGHTS_NAME}),
    ):
        assert len(hub.repos[repo].messages) == 2  # the repo's initial commit + one upload
        files = set(hub.files(repo))
        assert {"config.json", "pruner_config.json", "README.md", "sparsity_per_layer.png"} <= files
        assert format_files <= files
    assert compact.commit_url.startswith(hub.endpoint)

    _check_downloads(pruner, "tester/tiny-afr-dense", "tester/tiny-afr-compact")

    hub.stop()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    _check_downloads(pruner, "tester/tiny-afr-dense", "tester/tiny-afr-compact")


def test_a_failed_download_of_the_masks_is_an_error_not_an_unpruned_model(hub, pruner, monkeypatch):
    pruner.push_to_hub("tester/tiny-afr-flaky")
    hub.fail_files = {MASKS_NAME}  # the Hub answers 500, however often the client retries
    monkeypatch.setattr(huggingface_hub.utils._http.time, "sleep", lambda seconds: None)
    with pytest.raises(OSError, match="Cannot get pruning_masks.safetensors"):
        AFRPruner.from_pretrained("tester/tiny-afr-flaky")
    hub.fail_files = set()
    restored = AFRPruner.from_pretrained("tester/tiny-afr-flaky")
    assert all(torch.equal(restored.masks[k], pruner.masks[k]) for k in pruner.masks)


def test_push_updates_the_readme_and_replaces_the_other_format(hub, pruner):
    repo = "tester/tiny-afr-switch"
    pruner.push_to_hub(repo, datasets="cifar10", accuracy=0.5)
    card = ModelCard(hub.files(repo)["README.md"].decode())
    card.text = "\n# Notes by the owner\n\nKeep this paragraph.\n\n" + card.text
    HfApi().upload_file(path_or_fileobj=str(card).encode(), path_in_repo="README.md", repo_id=repo)
    pruner.push_to_hub(repo, checkpoint_format="compact", commit_message="Switch to compact")
    files = hub.files(repo)
    assert COMPACT_WEIGHTS_NAME in files
    assert not {"model.safetensors", MASKS_NAME} & set(files)
    readme = ModelCard(files["README.md"].decode())
    assert "Keep this paragraph." in readme.text and "Checkpoint format: `compact`" in readme.text
    assert readme.text.count("Checkpoint format:") == 1
    assert readme.data.library_name == "hf_afr" and readme.data.eval_results[0].metric_value == 0.5
    assert hub.repos[repo].messages[-1] == "Switch to compact"


def test_failed_upload_raises_and_leaves_local_files_intact(hub, pruner, tmp_path, monkeypatch):
    local = tmp_path / "local"
    pruner.save_pretrained(local)
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in local.iterdir()}
    masks_before = {k: m.clone() for k, m in pruner.masks.items()}
    waits = []
    shim = {n: getattr(time, n) for n in dir(time) if not n.startswith("_")}
    shim["sleep"] = waits.append  # skip the client's retry back-off
    monkeypatch.setattr(huggingface_hub.utils._http, "time", types.SimpleNamespace(**shim))
    repo = "tester/tiny-afr-broken"
    hub.create_repo(repo)
    hub.fail_commits = True
    with pytest.raises(OSError, match=r"(?s)tiny-afr-broken.*500.*did not accept"):
        pruner.push_to_hub(repo)
    assert waits, "the commit was not retried"
    assert hub.repos[repo].messages == ["initial commit"]
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in local.iterdir()} == before
    assert all(torch.equal(pruner.masks[k], masks_before[k]) for k in masks_before)


def test_token_is_used_but_never_written(hub, pruner, caplog):
    token = "hf_s3cr3t_token_for_this_test"
    pruner.push_to_hub("tester/tiny-afr-token", checkpoint_format="compact", token=token)
    assert f"Bearer {token}" in hub.authorizations
    assert not any(
        token.encode() in content for content in hub.files("tester/tiny-afr-token").values()
    )
    assert token not in caplog.text


def test_push_needs_a_pruned_model(hub):
    with pytest.raises(ValueError, match="prune"):
        AFRPruner(tiny_vit(), PrunerConfig()).push_to_hub("tester/nothing")
