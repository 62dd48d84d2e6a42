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
