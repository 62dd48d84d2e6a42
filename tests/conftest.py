"""Test-wide setup: one model cache per test session, offline hub."""

import os
import shutil
import tempfile


def pytest_configure(config):
    # Built-in models are created once into this cache and loaded through the
    # same from_pretrained path as real checkpoints. Subprocesses inherit it.
    if "HARNESS_TEST_CACHE" in os.environ:
        os.environ["HARNESS_CACHE"] = os.environ["HARNESS_TEST_CACHE"]
    else:
        path = tempfile.mkdtemp(prefix="harness-test-cache-")
        os.environ["HARNESS_CACHE"] = path
        config.add_cleanup(lambda: shutil.rmtree(path, ignore_errors=True))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # the commands' output is read as plain text: no colour forced by the CI host
    for name in ("GITHUB_ACTIONS", "FORCE_COLOR", "PY_COLORS"):
        os.environ.pop(name, None)
    # property tests are judged on what they find, not on how long one example takes on a loaded machine
    from hypothesis import settings
    settings.register_profile("harness", parent=settings.default, deadline=None)
    settings.load_profile("harness")


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def one_cpu_thread():
    """The tiny model is too small to gain from threads; on a shared CPU they cost a lot."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def harness_cache():
    """The session's model cache (pytest_configure points HARNESS_CACHE at a temporary folder)."""
    from harness import checkpoints as ck
    return ck.cache_dir()


@pytest.fixture(scope="session")
def tiny_ref(harness_cache):
    from harness import checkpoints as ck
    return ck.resolve("tiny")


@pytest.fixture
def broken_clip(tmp_path):
    """A CLIP folder whose config is sound and whose weights file is not: it passes every check made
    before loading and fails only when loaded (as weights damaged or swapped on disk would)."""
    import json

    from harness.metrics.clip_models import TINY_CONFIG

    folder = tmp_path / "broken-clip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CONFIG}))
    (folder / "open_clip_model.safetensors").write_bytes(b"not a safetensors file" * 10)
    return folder


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    """A Hugging Face cache with nothing in it: hub ids and single files' reference repos are missing."""
    from huggingface_hub import constants

    path = tmp_path / "hf-hub"
    path.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(path))
    return path
