"""An interrupted rescore of several metrics is taken up for all of them by the next eval, a rescore reads
no CLIP embedding the old code cached, and --scale names a bad -m spec by its own error."""

import numpy as np
import pytest

from harness import evaluate as ev
from harness.core import Job, Score
from harness.evaluate import evaluate, scaled_clip_specs
from harness.ledger import Ledger
from harness.metrics import metric_from_spec
from harness.provenance import a1111_parameters, provenance_record, write_png_atomic
from test_evaluate_fixes import _add_noise_jobs


def _jobs(ledger):
    return [job.key for job in _add_noise_jobs(ledger)]


def test_an_interrupted_rescore_of_two_metrics_is_taken_up_for_both(tmp_path, monkeypatch):
    specs = ["health", "watermark"]
    ids = [metric_from_spec(s).id for s in specs]
    with Ledger.open(tmp_path / "run") as ledger:
        keys = _jobs(ledger)
        # scores from an older version of both metrics' code
        ledger.put_scores([Score(k, m, 0.25) for k in keys for m in ids])

    calls, real = [], ev.item_for

    def cut_off(ledger, job):  # Ctrl-C during the first metric's second chunk
        calls.append(job.key)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(ledger, job)

    monkeypatch.setattr(ev, "item_for", cut_off)
    with Ledger.open(tmp_path / "run") as ledger, pytest.raises(KeyboardInterrupt):
        evaluate(ledger, specs, log=lambda m: None, chunk=1, rescore=True)
    monkeypatch.setattr(ev, "item_for", real)

    with Ledger.open(tmp_path / "run") as ledger:
        evaluate(ledger, specs, log=lambda m: None)  # the next eval takes the rescore up
        frame = ledger.scores_frame()
        old = frame[frame["value"] == 0.25]
        # no score of the old code is left, for either metric
        assert old.empty, f"old scores left after the rescore was taken up: {sorted(set(old['metric']))}"
@pytest.mark.parametrize("spec, expected", [
    ("clip_scor", "unknown metric 'clip_scor'"),
    ("clip_score[model=tiny", "bad metric name"),
])
def test_scale_with_a_bad_spec_reports_the_specs_own_error(spec, expected):
    with pytest.raises((KeyError, ValueError)) as info:
        scaled_clip_specs([spec], 2.5)
    assert expected in str(info.value.args[0]), info.value.args[0]


def test_a_metric_named_two_ways_is_scored_once_in_the_order_first_named(tmp_path):
    from harness.evaluate import metrics_for_run

    with Ledger.open(tmp_path / "run") as ledger:
        _jobs(ledger)
        metrics = metrics_for_run(ledger, ["watermark", "health", "watermark:messages=sdv1+sdv2+sdxl", "health"])
    assert [m.id for m in metrics] == [metric_from_spec("watermark").id, metric_from_spec("health").id]


def test_rescore_after_a_change_in_image_preparation_gives_the_new_values(tmp_path, monkeypatch):
    from harness.metrics import clip_embed

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))  # the default embedding cache, empty
    job = Job(checkpoint="tiny", fingerprint="ab" * 32, mode="txt2img", prompt="a red fox", negative_prompt="",
              seed=1, steps=4, guidance=7.5, scheduler="ddim", width=64, height=64)
    with Ledger.open(tmp_path / "run") as ledger:
        ledger.add_jobs([job])
        pixels = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        write_png_atomic(ledger.image_path(job.key), pixels,
                         parameters=a1111_parameters(job, sampler="DDIM", model_name="tiny"),
                         provenance=provenance_record(job, batch_size=1, slot=0))
        ledger.mark_done(job.key, batch_id=1, batch_size=1, slot=0, seconds=0.1, device="cpu", dtype="float32")
        spec = "clip_score:model=tiny,clamp=batch_mean"  # unclamped, so any change shows
        evaluate(ledger, [spec], log=lambda m: None)
        before = float(ledger.scores_frame()["value"].iloc[0])

        # the code that prepares images for CLIP changes (here: read as grey), and the user rescores
        real = clip_embed.to_rgb
        monkeypatch.setattr(clip_embed, "to_rgb", lambda im: real(im).convert("L").convert("RGB"))
        evaluate(ledger, [spec], log=lambda m: None, rescore=True)
        after = float(ledger.scores_frame()["value"].iloc[0])

        # what a fresh score of the new code gives (no cache)
        evaluate(ledger, ["clip_score:model=tiny,clamp=batch_mean,cache=none"], log=lambda m: None, rescore=True)
        fresh = float(ledger.scores_frame()["value"].iloc[0])
    assert abs(fresh - before) > 1e-3, "the change must matter for this test"
    assert abs(after - fresh) < 1e-4, f"--rescore stored {after}, the old code's value was {before}, new {fresh}"
