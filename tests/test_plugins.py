"""Metrics from user modules named in HARNESS_PLUGINS work in every command."""

import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from harness.metrics import Item, Metric, MetricInfo

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


@register
class Quits(Metric):
    INFO = MetricInfo(name="quits", description="calls sys.exit", unit="x", range=(0.0, 1.0), higher_is_better=True)

    def _score(self, items):
        raise SystemExit(3)
'''


def make_run(run: Path, rgb=(120, 120, 120)) -> Path:
    """A run folder of two done 64x64 images of one colour (prompts `a red fox 0` and `a red fox 1`)."""
    import numpy as np

    from harness.core import Job
    from harness.ledger import Ledger
    from harness.provenance import write_png_atomic

    with Ledger.open(run) as ledger:
        jobs = [Job(checkpoint="tiny", fingerprint="ab" * 32, mode="txt2img", prompt=f"a red fox {i}",
                    negative_prompt="", seed=i, steps=4, guidance=7.5, scheduler="ddim", width=64, height=64)
                for i in range(2)]
        ledger.add_jobs(jobs)
        for job in jobs:
            write_png_atomic(ledger.image_path(job.key), np.full((64, 64, 3), rgb, np.uint8), parameters="x",
                             provenance={"key": job.key})
            ledger.mark_done(job.key, batch_id=1, batch_size=1, slot=0, seconds=0.1, device="cpu", dtype="float32")
    return run


def plugin_env(folder: Path, modules: str) -> dict:
    return {**os.environ, "HARNESS_PLUGINS": modules, "PYTHONPATH": os.pathsep.join([str(folder), str(ROOT)])}


def test_a_metric_that_raises_is_named_and_the_other_metrics_are_still_scored(tmp_path):
    """A plugin's bug (an exception, or a result count other than its item count) is one line naming the
    metric and the error under "not scored"; nothing is stored for it, so the next eval tries it again."""
    from harness.ledger import Ledger

    (tmp_path / "faulty_metrics.py").write_text(FAULTY)
    run = make_run(tmp_path / "run")
    env = plugin_env(tmp_path, "faulty_metrics")
    for _ in range(2):  # the second eval tries the faulty metrics again
        r = subprocess.run([sys.executable, "-m", "harness", "eval", str(run), "-m", "boom", "-m", "short",
                            "-m", "quits", "-m", "prompt_length"], capture_output=True, text=True, cwd=tmp_path,
                           env=env)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert "not scored: 2 images (2x metric boom failed: RuntimeError: plugin bug)" in r.stderr
        assert "not scored: 2 images (2x metric quits failed: SystemExit: 3)" in r.stderr
        assert ("not scored: 2 images (2x metric short (plugin module faulty_metrics): _score must return a list "
                "with one (value: float, detail: dict) per item; got 1 results for 2 items)") in r.stderr
        assert "prompt_length: 2 images scored" in r.stdout and r.stdout.endswith("; mean 4\n"), r.stdout
    with Ledger.open(run, readonly=True) as ledger:
        assert set(ledger.scores_frame()["metric"]) == {"prompt_length"}


BROKEN = PLUGIN + '''
import numpy as np


@register
class NoDetail(Metric):
    INFO = MetricInfo(name="no_detail", description="None for a detail", unit="x", range=(0.0, 1.0),
                      higher_is_better=True)

    def _score(self, items):
        return [(0.5, None) for item in items]


@register
class NumpyDetail(Metric):
    INFO = MetricInfo(name="numpy_detail", description="an array in the detail", unit="x", range=(0.0, 1.0),
                      higher_is_better=True)

    def _score(self, items):
        return [(np.float32(0.5), {"arr": np.zeros(2)}) for item in items]


@register
class NumpyValue(Metric):
    INFO = MetricInfo(name="numpy_value", description="numpy scalars for values", unit="x", range=(0.0, 1.0),
                      higher_is_better=True)

    def _score(self, items):
        return [(np.float32(0.25), {"n": 1}) for item in items]
'''


def test_a_plugin_whose_results_break_the_contract_is_not_scored_and_the_metrics_after_it_are(tmp_path):
    """A detail that is None, or holds a numpy array, used to end `harness eval` with a traceback or exit 2
    before the next metrics ran; now it is named under "not scored" with what was expected, nothing is
    stored for it, the metrics after it are scored, and a numpy scalar value is stored as a float."""
    from harness.ledger import Ledger

    (tmp_path / "broken_metrics.py").write_text(BROKEN)
    run = make_run(tmp_path / "run")
    r = subprocess.run([sys.executable, "-m", "harness", "eval", str(run), "-m", "no_detail", "-m", "numpy_detail",
                        "-m", "numpy_value", "-m", "prompt_length"], capture_output=True, text=True, cwd=tmp_path,
                       env=plugin_env(tmp_path, "broken_metrics"))
    assert r.returncode == 1 and "Traceback" not in r.stderr and "error:" not in r.stderr, r.stderr
    expected = "_score must return a list with one (value: float, detail: dict) per item; result 0 has"
    assert (f"not scored: 2 images (2x metric no_detail (plugin module broken_metrics): {expected} detail "
            "NoneType None, not a dict (give {} for none))") in r.stderr
    assert (f"not scored: 2 images (2x metric numpy_detail (plugin module broken_metrics): {expected} a detail "
            "that is not JSON-serialisable without NaN/inf (Object of type ndarray is not JSON serializable)") \
        in r.stderr
    assert "numpy_value: 2 images scored" in r.stdout and "prompt_length: 2 images scored" in r.stdout, r.stdout
    with Ledger.open(run, readonly=True) as ledger:
        frame = ledger.scores_frame()
    assert set(frame["metric"]) == {"numpy_value", "prompt_length"}
    assert list(frame.loc[frame["metric"] == "numpy_value", "value"]) == [0.25, 0.25]


class Returns(Metric):
    """Test-only: `_score` returns `what(items)`, whatever that is."""

    INFO = MetricInfo(name="returns", description="returns what it is told", unit="x", range=(0.0, 1.0),
                      higher_is_better=True)

    def __init__(self, what):
        super().__init__()
        self.what = what

    def _score(self, items):
        return self.what(items)


@pytest.mark.parametrize("what, problem", [
    (lambda items: 0.5, "got float 0.5"),
    (lambda items: ((0.5, {}) for _ in items), "got a generator (return a list: [(value, {}) for item in items])"),
    (lambda items: [(0.5, {}, 1) for _ in items], "result 0 is tuple (0.5, {}, 1)"),
    (lambda items: [0.5 for _ in items], "result 0 is float 0.5"),
    (lambda items: [("high", {}) for _ in items], "result 0 has value str 'high', not a real number"),
    (lambda items: [(0.5, None) for _ in items], "result 0 has detail NoneType None, not a dict"),
    (lambda items: [(0.5, {"v": math.nan}) for _ in items], "result 0 has a detail that is not JSON-serialisable"),
    (lambda items: [(5.0, {}) for _ in items], "result 0 has value 5, outside the metric's declared range [0, 1]"),
    (lambda items: [(math.inf, {}) for _ in items], "result 0 has value inf, not finite"),
    (lambda items: [(0.5, {})], "got 1 results for 2 items"),
])
def test_a_result_that_breaks_the_contract_says_what_was_expected(tmp_path, what, problem):
    """Every item of the batch gets NaN, marked retry (not stored), with one reason naming the metric, its
    module, the contract and what came back instead."""
    items = [Item(key=f"k{i}", image_path=grey_png(tmp_path / f"{i}.png")) for i in range(2)]
    scores = Returns(what).score(items)
    assert all(math.isnan(s.value) and s.detail["retry"] is True for s in scores)
    reason = scores[0].detail["reason"]
    assert reason.startswith(f"metric returns (plugin module {__name__}): _score must return a list with one "
                             "(value: float, detail: dict) per item; "), reason
    assert problem in reason, reason


def test_nan_scalars_and_values_at_the_range_bounds_are_kept(tmp_path):
    """NaN (with a reason) is how a metric says it cannot score an item; numpy and 0-d values become floats;
    a bound overshot by rounding only (a float32 cosine of 1.0000001) is not a broken metric."""
    import numpy as np

    items = [Item(key=f"k{i}", image_path=grey_png(tmp_path / f"{i}.png")) for i in range(4)]
    values = [(math.nan, {"reason": "nothing to see"}), (np.float64(0.0), {}), (np.array(1.0), {}),
              (1.0000001, {"n": np.int64(3).item()})]
    scores = Returns(lambda _: values).score(items)
    assert [type(s.value) for s in scores] == [float] * 4
    assert math.isnan(scores[0].value) and scores[0].detail == {"reason": "nothing to see"}
    assert [s.value for s in scores[1:]] == [0.0, 1.0, 1.0000001] and scores[3].detail == {"n": 3}


def grey_png(path: Path) -> Path:
    from PIL import Image

    Image.new("RGB", (16, 16), (120, 120, 120)).save(path)
    return path


def readme_plugin() -> tuple[str, list[str]]:
    """The plugin module README.md shows, and the `harness eval` arguments of the command after it."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    (module,) = [b for b in blocks if "from harness.metrics import Metric, MetricInfo, Option, register" in b]
    (command,) = [line for line in text.splitlines() if line.startswith("HARNESS_PLUGINS=my_metrics ")]
    words = shlex.split(command)
    return module, words[words.index("eval") + 2:]  # after `eval RUN`


def test_the_readme_plugin_works_as_shown(tmp_path):
    """The README's plugin module, loaded as it says, scores a run with the `-m` specs it shows."""
    from harness.ledger import Ledger

    module, args = readme_plugin()
    assert args == ["-m", "brightness", "-m", "brightness:channel=R"]
    (tmp_path / "my_metrics.py").write_text(module)
    run = make_run(tmp_path / "run", rgb=(200, 100, 50))
    r = subprocess.run([sys.executable, "-m", "harness", "eval", str(run), *args], capture_output=True, text=True,
                       cwd=tmp_path, env=plugin_env(tmp_path, "my_metrics"))
    assert r.returncode == 0, r.stderr
    with Ledger.open(run, readonly=True) as ledger:
        frame = ledger.scores_frame()
    means = frame.groupby("metric")["value"].mean().to_dict()
    assert means == {"brightness[channel=L]": 124.0, "brightness[channel=R]": 200.0}  # L: PIL's ITU-R 601-2 luma
    assert set(frame["detail"]) == {'{"std":0.0}'}
