"""Metrics from user modules named in HARNESS_PLUGINS work in every command."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PLUGIN = '''
from harness.metrics import Metric, MetricInfo, register


@register
class PromptLength(Metric):
    INFO = MetricInfo(name="prompt_length", description="words in the prompt", unit="words",
                      range=(0.0, 1000.0), higher_is_better=True, needs=frozenset({"prompt"}))

    def _score(self, items):
        return [(float(len(item.prompt.split())), {}) for item in items]
'''


def test_plugin_metric_is_listed_and_usable(tmp_path):
    (tmp_path / "my_metrics.py").write_text(PLUGIN)
    env = {**os.environ, "HARNESS_PLUGINS": "my_metrics",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-m", "harness", "metrics"], capture_output=True, text=True, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr
    assert "prompt_length: words in the prompt" in r.stdout
    code = ("from harness.metrics import get_metric, Item; "
            "print(get_metric('prompt_length').score([Item('k' * 64, 'x.png', prompt='a red fox')])[0].value)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
    assert r.stdout.strip() == "3.0", r.stderr


def test_a_plugin_that_cannot_be_imported_is_one_line_naming_the_variable(tmp_path):
    env = {**os.environ, "HARNESS_PLUGINS": "my_metrics"}  # not on PYTHONPATH
    r = subprocess.run([sys.executable, "-m", "harness", "metrics"], capture_output=True, text=True, cwd=tmp_path,
                       env={**env, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip() == ("error: HARNESS_PLUGINS names 'my_metrics', which cannot be imported (No module "
                                "named 'my_metrics'); a plugin must be importable: installed, or a module in a "
                                "folder on PYTHONPATH")


def test_a_plugin_that_fails_while_importing_is_one_line_too(tmp_path):
    (tmp_path / "broken.py").write_text("def f(:\n")
    (tmp_path / "taken.py").write_text(PLUGIN.replace('name="prompt_length"', 'name="health"'))
    for name, why in (("broken", "SyntaxError: "), ("taken", "ValueError: ")):
        env = {**os.environ, "HARNESS_PLUGINS": name, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
        r = subprocess.run([sys.executable, "-m", "harness", "metrics"], capture_output=True, text=True,
                           cwd=tmp_path, env=env)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert r.stderr.startswith(f"error: HARNESS_PLUGINS names {name!r}, which failed while importing: {why}")


FAULTY = PLUGIN + '''

@register
class Boom(Metric):
    INFO = MetricInfo(name="boom", description="raises", unit="x", range=(0.0, 1.0), higher_is_better=True)

    def _score(self, items):
        raise RuntimeError("plugin bug")


@register
class Short(Metric):
    INFO = MetricInfo(name="short", description="one result too few", unit="x", range=(0.0, 1.0),
                      higher_is_better=True)

    def _score(self, items):
        return [(1.0, {}) for item in items[1:]]
'''


def test_a_metric_that_raises_is_named_and_the_other_metrics_are_still_scored(tmp_path):
    """A plugin's bug (an exception, or a result count other than its item count) is one line naming the
    metric and the error under "not scored"; nothing is stored for it, so the next eval tries it again."""
    import numpy as np

    from harness.core import Job
    from harness.ledger import Ledger
    from harness.provenance import write_png_atomic

    (tmp_path / "faulty_metrics.py").write_text(FAULTY)
    run = tmp_path / "run"
    with Ledger.open(run) as ledger:
        jobs = [Job(checkpoint="tiny", fingerprint="ab" * 32, mode="txt2img", prompt=f"a red fox {i}",
                    negative_prompt="", seed=i, steps=4, guidance=7.5, scheduler="ddim", width=64, height=64)
                for i in range(2)]
        ledger.add_jobs(jobs)
        for job in jobs:
            write_png_atomic(ledger.image_path(job.key), np.full((64, 64, 3), 120, np.uint8), parameters="x",
                             provenance={"key": job.key})
            ledger.mark_done(job.key, batch_id=1, batch_size=1, slot=0, seconds=0.1, device="cpu", dtype="float32")
    env = {**os.environ, "HARNESS_PLUGINS": "faulty_metrics",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    for _ in range(2):  # the second eval tries the faulty metrics again
        r = subprocess.run([sys.executable, "-m", "harness", "eval", str(run), "-m", "boom", "-m", "short",
                            "-m", "prompt_length"], capture_output=True, text=True, cwd=tmp_path, env=env)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert "not scored: 2 images (2x metric boom failed: RuntimeError: plugin bug)" in r.stderr
        assert "not scored: 2 images (2x metric short failed: RuntimeError: returned 1 results for 2 items)" \
            in r.stderr
        assert "prompt_length: 2 images scored" in r.stdout and r.stdout.endswith("; mean 4\n"), r.stdout
    with Ledger.open(run, readonly=True) as ledger:
        assert set(ledger.scores_frame()["metric"]) == {"prompt_length"}
