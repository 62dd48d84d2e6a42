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
