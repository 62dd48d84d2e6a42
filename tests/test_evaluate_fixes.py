"""Evaluator fixes on real PNGs, a real ledger and the built-in tiny CLIP: the batch-mean clamp in the
summary, 16-bit images, watermark alpha, --scale on id-form specs, text probes without prompts, too-small
images for health, quoted option values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from PIL import Image

from harness.core import Job, Score
from harness.evaluate import evaluate, evaluate_run, scaled_clip_specs
from harness.ledger import Ledger
from harness.metrics import Item, get_metric, metric_from_spec, parse_metric_spec
from harness.metrics.base import read_rgb
from harness.provenance import a1111_parameters, provenance_record, write_png_atomic

pytest.importorskip("open_clip")

PROBE = "blue"  # on noise images the tiny CLIP gives it negative cosines (checked in the test)
COMMA_PROBE = "a red circle, by ian mcque"


def noise(size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


@pytest.fixture
def run(tmp_path):
    """A ledger with three done tiny-checkpoint jobs of noise images, one of them without a prompt."""
    with Ledger.open(tmp_path / "run") as ledger:
        _add_noise_jobs(ledger)
        yield ledger


def _add_noise_jobs(ledger: Ledger) -> list[Job]:
    jobs = [Job(checkpoint="tiny", fingerprint="ab" * 32, mode="txt2img", prompt=prompt, negative_prompt="",
                    seed=i, steps=4, guidance=7.5, scheduler="ddim", width=32, height=32)
            for i, prompt in enumerate(["a fox", "", "a cat"])]
    ledger.add_jobs(jobs)
    for job in jobs:
        write_png_atomic(ledger.image_path(job.key), noise(32, job.seed),
                         parameters=a1111_parameters(job, sampler="DDIM", model_name="tiny"),
                         provenance=provenance_record(job, batch_size=1, slot=0))
        ledger.mark_done(job.key, batch_id=1, batch_size=1, slot=0, seconds=0.1, device="cpu",
                         dtype="float32")
    return jobs


def clip(options: str) -> str:
    return f"clip_score:model=tiny,cache=none,{options}"


# -- 1. clamp=batch_mean: the summary is the clamped mean ---------------------------


def test_batch_mean_summary_is_the_clamped_mean(run, one_cpu_thread):
    (summary,) = evaluate(run, [clip(f"clamp=batch_mean,text={PROBE}")], log=lambda m: None)
    stored = run.scores_frame()["value"].tolist()
    assert len(stored) == 3 and np.mean(stored) < 0, "want a negative mean, else the clamp is not tested"
    assert summary.mean == 0.0
    assert min(stored) < 0  # per-image values stay unclamped


# -- 2. 16-bit PNGs read like their 8-bit copies -----------------------------------
def test_16_bit_png_scores_like_its_8_bit_copy(tmp_path, one_cpu_thread):
    gray = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))  # a dark-to-light ramp, 64x64
    eight, sixteen = tmp_path / "g8.png", tmp_path / "g16.png"
    Image.fromarray(gray, "L").save(eight)
    Image.fromarray(gray.astype(np.uint16) * 257).save(sixteen)
    with Image.open(sixteen) as image:
        assert image.mode.startswith("I"), image.mode
    assert np.array_equal(np.asarray(read_rgb(sixteen)[0]), np.asarray(read_rgb(eight)[0]))
    items = [Item(key="g8", image_path=eight, prompt="a ramp"), Item(key="g16", image_path=sixteen, prompt="a ramp")]
    health = get_metric("health").score(items)
    assert [s.value for s in health] == [1.0, 1.0], [s.detail for s in health]
    scores = get_metric("clip_score", model="tiny", cache="none", clamp="batch_mean").score(items)
    assert scores[0].value == pytest.approx(scores[1].value, abs=1e-6)


# -- 3. watermark alpha must be a rate ------------------------------------------------
@pytest.mark.parametrize("alpha", ["1", "2.5", "0", "-0.1", "nan"])
def test_watermark_alpha_outside_0_1_is_refused(alpha):
    with pytest.raises(ValueError, match=r"option alpha=.*alpha must be in \(0, 1\)"):
        get_metric("watermark", alpha=alpha)
    assert get_metric("watermark", alpha="0.01").options["alpha"] == 0.01


# -- 4. --scale on id-form specs, and on metrics without a scale ----------------------
def test_scale_rescales_an_id_form_clip_spec():
    spec = "clip_score[model=toy,pretrained=toy,scale=100,clamp=image]"
    (scaled,) = scaled_clip_specs([spec], 2.5)
    assert metric_from_spec(scaled).id == "clip_score[model=toy,pretrained=toy,scale=2.5,clamp=image]"


def test_scale_for_a_metric_without_one_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"--scale applies to CLIP score specs, and none of 'health' takes a scale"):
        scaled_clip_specs(["health"], 2.5)
    assert scaled_clip_specs(["health", "clip_score"], 2.5) == ["health", "clip_score:scale=2.5"]


# -- 5. a text probe needs no prompt ---------------------------------------------------
def test_text_probe_scores_an_item_without_a_prompt(run, one_cpu_thread):
    (probe, prompt) = evaluate(run, [clip(f"text={PROBE}"), clip("scale=100")], log=lambda m: None)
    assert probe.nan == 0 and probe.scored == 3
    assert prompt.nan == 1 and prompt.reasons == {"item has no prompt": 1}
    (again,) = evaluate(run, [clip("scale=100")], log=lambda m: None)  # nothing new to score: the stored NaN
    assert (again.scored, again.skipped, again.nan) == (0, 3, 1)       # is still counted, with its reason
    assert again.reasons == {"item has no prompt": 1} and again.mean == prompt.mean


# -- 6. health: too small to judge is NaN with a reason --------------------------------
@pytest.mark.parametrize("size", [1, 8, 12])
def test_health_of_an_image_too_small_to_judge_is_nan_with_reason(tmp_path, size):
    path = tmp_path / f"n{size}.png"
    Image.fromarray(noise(size, size)).save(path)
    (score,) = get_metric("health").score([Item(key="n", image_path=path)])
    assert math.isnan(score.value) and "too small to judge" in score.detail["reason"]


def test_health_of_16_px_noise_is_healthy(tmp_path):
    path = tmp_path / "n16.png"
    Image.fromarray(noise(16, 0)).save(path)
    assert get_metric("health").score([Item(key="n", image_path=path)])[0].value == 1.0


# -- 7. quoted option values -------------------------------------------------------------
def test_quoted_value_may_hold_commas_and_round_trips_through_the_id():
    name, options = parse_metric_spec(f'clip_score:model=tiny,text="{COMMA_PROBE}",scale=2.5')
    assert (name, options) == ("clip_score", {"model": "tiny", "text": COMMA_PROBE, "scale": "2.5"})
    metric = metric_from_spec(f'clip_score:model=tiny,text="{COMMA_PROBE}"')
    assert metric_from_spec(metric.id).options["text"] == COMMA_PROBE
    assert metric_from_spec(metric.id).id == metric.id
    odd = get_metric("clip_score", model="tiny", text=' quote " and \\ , comma ')
    assert metric_from_spec(odd.id).options["text"] == odd.options["text"]


@pytest.mark.parametrize("spec, column", [('clip_score:text="a, b', 17), ('clip_score[text="a]', 17)])
def test_unbalanced_quote_names_the_spec_and_column(spec, column):
    with pytest.raises(ValueError, match=rf"metric spec .*unbalanced double quote at column {column}"):
        parse_metric_spec(spec)


def test_quoted_probe_is_stored_under_its_id_and_not_scored_twice(run, one_cpu_thread):
    spec = clip(f'text="{COMMA_PROBE}"')
    (first,) = evaluate(run, [spec], log=lambda m: None)
    (again,) = evaluate(run, [spec], log=lambda m: None)
    assert first.scored == 3 and again.skipped == 3 and again.scored == 0
    (stored,) = set(run.scores_frame()["metric"])
    assert metric_from_spec(stored).options["text"] == COMMA_PROBE


# -- eval on a run whose images changed after scoring -----------------------------


def test_eval_drops_scores_of_images_deleted_or_damaged_since(tmp_path):
    with Ledger.open(tmp_path / "run") as ledger:
        deleted, damaged, kept = (job.key for job in _add_noise_jobs(ledger))
    (first,) = evaluate_run(tmp_path / "run", ["health"], log=lambda m: None)
    assert first.scored == 3
    with Ledger.open(tmp_path / "run") as ledger:
        ledger.image_path(deleted).unlink()
        path = ledger.image_path(damaged)
        path.write_bytes(cut := path.read_bytes()[:-40])  # cut short, as an interrupted copy leaves it
    logged: list[str] = []
    (again,) = evaluate_run(tmp_path / "run", ["health"], log=logged.append)
    assert logged[0].startswith("2 finished image(s) were missing, damaged or changed (1 missing, 1 "), logged
    assert logged[0].endswith(") and are pending again, their scores removed (a damaged file stays in images/ "
                              "until the image is made again); the command that made this folder makes them again "
                              f"(for an experiment: harness run EXPERIMENT --out {tmp_path / 'run'})")
    assert (again.scored, again.skipped) == (0, 1)
    with Ledger.open(tmp_path / "run", readonly=True) as ledger:
        assert ledger.done_keys() == {kept}
        assert set(ledger.scores_frame()["key"]) == {kept}
        assert ledger.image_path(damaged).read_bytes() == cut  # scoring never deletes a file


def test_eval_rescores_an_image_replaced_by_hand(tmp_path):
    """A sound PNG copied over a finished image is not the image that was scored: eval sends it back to
    pending with its scores removed, and leaves the file for `harness run` to replace."""
    with Ledger.open(tmp_path / "run") as ledger:
        replaced, kept, _ = (job.key for job in _add_noise_jobs(ledger))
    (first,) = evaluate_run(tmp_path / "run", ["health"], log=lambda m: None)
    assert first.scored == 3
    with Ledger.open(tmp_path / "run") as ledger:
        path = ledger.image_path(replaced)
        Image.new("RGB", (32, 32)).save(path)  # all black: health would be 0, not the stored 1
        black = path.read_bytes()
    logged: list[str] = []
    (again,) = evaluate_run(tmp_path / "run", ["health"], log=logged.append)
    assert logged[0].startswith("1 finished image(s) were missing, damaged or changed (1 changed since it was made)")
    assert (again.scored, again.skipped) == (0, 2)
    with Ledger.open(tmp_path / "run", readonly=True) as ledger:
        assert replaced not in ledger.done_keys() and kept in ledger.done_keys()
        assert replaced not in set(ledger.scores_frame()["key"])
        assert ledger.image_path(replaced).read_bytes() == black


def test_a_changed_init_image_is_not_scored_until_the_original_is_back(tmp_path, one_cpu_thread):
    """Image similarity reads the init image: one edited since the images were made is not the image they
    started from, so they are not scored against it (nothing stored: the next eval tries again)."""
    from harness.images import init_hash

    init = tmp_path / "init.png"
    Image.fromarray(noise(40, 7)).save(init)
    job = Job(checkpoint="tiny", fingerprint="ab" * 32, mode="img2img", prompt="a fox", negative_prompt="",
              seed=1, steps=4, guidance=7.5, scheduler="ddim", width=32, height=32, strength=0.5,
              init_image=str(init), init_hash=init_hash(init, 32, 32))
    with Ledger.open(tmp_path / "run") as ledger:
        ledger.add_jobs([job])
        write_png_atomic(ledger.image_path(job.key), noise(32, 1), parameters="x",
                         provenance=provenance_record(job, batch_size=1, slot=0))
        ledger.mark_done(job.key, batch_id=1, batch_size=1, slot=0, seconds=0.1, device="cpu", dtype="float32")
    original = init.read_bytes()
    Image.fromarray(noise(40, 8)).save(init)  # another picture under the same name
    spec = "clip_image_similarity:model=tiny,cache=none"
    (changed,) = evaluate_run(tmp_path / "run", [spec], log=lambda m: None)
    assert changed.scored == 0 and changed.unscored == 1
    (reason,) = changed.unscored_reasons
    assert reason.startswith(f"file changed: init image {init} is not the image this one was made from")
    with Ledger.open(tmp_path / "run", readonly=True) as ledger:
        assert ledger.scores_frame().empty
    init.write_bytes(original)
    (back,) = evaluate_run(tmp_path / "run", [spec], log=lambda m: None)
    assert back.scored == 1 and back.unscored == 0 and math.isfinite(back.mean)


def test_metric_ids_keep_every_digit_of_an_option_that_needs_them():
    ids = {metric_from_spec(f"clip_score:model=tiny,scale={s}").id for s in ("1234567", "1234568", "2.50000001")}
    assert len(ids) == 3 and any("scale=2.50000001" in i for i in ids)
    assert metric_from_spec("clip_score:model=tiny,scale=2.5").id.endswith("scale=2.5,clamp=image]")  # short as ever
    assert scaled_clip_specs(["clip_score:model=tiny"], 1234567.0) == [
        "clip_score:model=tiny,scale=1234567.0"]


# -- a small img2img run of the tiny model, made by `harness run` ---------------------------------


@pytest.fixture(scope="module")
def i2i_run(tmp_path_factory, one_cpu_thread):
    """Two img2img images of the tiny model (`color` red and blue) from one init PNG; the folder holds
    `init.png`, `exp.toml` and the run folder `run`."""
    from harness.run import run_experiment

    folder = tmp_path_factory.mktemp("i2i")
    Image.fromarray(noise(48, 3)).save(folder / "init.png")
    (folder / "exp.toml").write_text(
        'name = "i2i"\nprompt = "a {@color: red|blue} cat"\nseeds = [1]\ncheckpoints = ["tiny"]\nmode = "img2img"\n'
        'init_images = "init.png"\nstrengths = [0.5]\nsteps = 2\nwidth = 64\nheight = 64\nmetrics = ["health"]\n')
    run_experiment(folder / "exp.toml", out=folder / "run", progress=False, log=lambda m: None)
    return folder


def cli(*args):
    from typer.testing import CliRunner

    from harness.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_a_damaged_init_image_is_not_scored_until_it_is_restored(i2i_run):
    """An init image cut short (an interrupted copy) cannot be checked against the one the images were made
    from: not scored yet, nothing stored, and once the file is back the next eval scores them."""
    init, run = i2i_run / "init.png", i2i_run / "run"
    original = init.read_bytes()
    init.write_bytes(original[:600])
    try:
        damaged = cli("eval", run, "-m", "clip_image_similarity:model=tiny,cache=none")
    finally:
        init.write_bytes(original)
    assert damaged.exit_code == 1, damaged.output
    assert (f"not scored: 2 images (2x file unreadable: init image {init} (OSError: image file is truncated"
            in damaged.stderr), damaged.stderr
    with Ledger.open(run, readonly=True) as ledger:
        assert set(ledger.scores_frame()["metric"]) == {"health"}
    restored = cli("eval", run, "-m", "clip_image_similarity:model=tiny,cache=none")
    assert restored.exit_code == 0, restored.output
    assert "clip_image_similarity[model=tiny,pretrained=tiny]: 2 images scored (2 in this pass); mean 0.9" \
        in restored.stdout


@pytest.mark.parametrize("need", ["init_image", "parent_image"])
def test_an_unreadable_init_or_parent_image_is_not_scored_yet(tmp_path, need):
    """A metric that reads the init or parent image (a plugin's, say) stores no NaN for one that does not
    decode now: the reason names the file, and the next eval tries again."""
    from harness.metrics import Metric, MetricInfo

    class InputWidth(Metric):
        INFO = MetricInfo(name="input_width", description="width of the input image", unit="px",
                          range=(0.0, 1e4), higher_is_better=True, needs=frozenset({"image", need}))

        def _score(self, items):
            return [(float(Image.open(item.init_image_path or item.parent_image_path).width), {}) for item in items]

    image, damaged = tmp_path / "image.png", tmp_path / "input.png"
    Image.fromarray(noise(32, 1)).save(image)
    Image.fromarray(noise(32, 2)).save(damaged)
    damaged.write_bytes(damaged.read_bytes()[:600])
    item = (Item(key="k", image_path=image, init_image_path=damaged, init_size=(32, 32), init_hash="ab" * 32)
            if need == "init_image" else Item(key="k", image_path=image, parent_image_path=damaged))
    (score,) = InputWidth().score([item])
    label = need.replace("_", " ")
    assert math.isnan(score.value) and score.detail["retry"] is True
    assert score.detail["reason"].startswith(f"file unreadable: {label} {damaged} (OSError: "), score.detail


def test_an_empty_pretrained_is_the_default_and_scores_under_the_same_id(run, one_cpu_thread):
    (first,) = evaluate(run, ["clip_score:model=tiny,cache=none"], log=lambda m: None)
    (again,) = evaluate(run, ["clip_score:model=tiny,pretrained=,cache=none"], log=lambda m: None)
    assert again.metric == first.metric and (again.scored, again.skipped) == (0, 3)
    assert metric_from_spec("clip_score:pretrained=").id == metric_from_spec("clip_score").id


def test_compare_takes_the_short_id_the_contact_sheet_shows(i2i_run, tmp_path, one_cpu_thread):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(i2i_run / "run", run)
    evaluate_run(run, ["clip_score:model=tiny,cache=none,text=a red circle", "clip_score:model=tiny,cache=none"],
                 log=lambda m: None)
    probe = "m.clip_score[model=tiny,pretrained=tiny,scale=100,clamp=image,text=a red circle] by f.color"
    for short in ("clip_score[model=tiny,text=a red circle]", "clip_score[text=a red circle]"):  # id, sheet label
        for command in (["compare", run, "--factor", "color", "--n-boot", "100"], ["report", run, "--no-html"]):
            r = cli(*command, "--metric", short)
            assert r.exit_code == 0, (short, r.output)
            assert probe in r.stdout, r.stdout


def test_a_damaged_ledger_is_one_line_for_every_command(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "ledger.sqlite").write_text("garbage\n")
    for command in (["eval", "--scale", "2.5"], ["compare", "--factor", "color"], ["report", "--no-html"]):
        r = cli(command[0], tmp_path / "bad", *command[1:])
        assert r.exit_code == 2, (command, r.output, r.exception)
        (line,) = r.stderr.splitlines()
        assert line.startswith(f"error: {tmp_path / 'bad' / 'ledger.sqlite'}: file is not a database"), line


def test_eval_takes_the_experiments_weights_paths_from_its_folder_wherever_it_runs(tmp_path, monkeypatch):
    """`harness eval RUN` without -m scores the experiment's metrics; a relative `pretrained=w` in them is the
    folder beside the experiment (as `harness run` read it), not one in the folder eval runs from."""
    import json

    from harness.evaluate import experiment_metrics
    from harness.ledger import Ledger

    (tmp_path / "study" / "w").mkdir(parents=True)
    (tmp_path / "elsewhere" / "w").mkdir(parents=True)  # a folder of the same name where eval runs
    run = tmp_path / "run"
    with Ledger.open(run) as led:
        led.set_meta("experiment", json.dumps({"metrics": ["health", "clip_score:model=mine,pretrained=w"]}))
        led.set_meta("experiment_path", str(tmp_path / "study" / "exp.toml"))
    monkeypatch.chdir(tmp_path / "elsewhere")
    with Ledger.open(run, readonly=True) as led:
        assert experiment_metrics(led) == ["health", f"clip_score:model=mine,pretrained={tmp_path / 'study' / 'w'}"]
    (run / "experiment.toml").write_text(f'base_dir = "{tmp_path / "moved"}"\nprompt = "a cat"\n')
    (tmp_path / "moved" / "w").mkdir(parents=True)  # the run folder's copy pins where paths were taken from
    with Ledger.open(run, readonly=True) as led:
        assert experiment_metrics(led)[1] == f"clip_score:model=mine,pretrained={tmp_path / 'moved' / 'w'}"


def test_an_option_whose_choices_include_empty_shows_it_in_the_error():
    from harness.metrics import metric_from_spec

    with pytest.raises(ValueError) as err:
        metric_from_spec("toy_color_match:want=pink")
    assert "want='pink': expected one of '' (empty), red, green" in str(err.value)


def test_a_folder_named_like_a_pretrained_tag_does_not_take_the_tags_place(tmp_path, monkeypatch):
    """`pretrained=openai` is open_clip's tag even where a folder `openai` sits in the working folder;
    `./openai` names the folder."""
    from harness.metrics import metric_from_spec

    (tmp_path / "openai").mkdir()
    monkeypatch.chdir(tmp_path)
    assert metric_from_spec("clip_score:model=ViT-B-32,pretrained=openai").id.startswith(
        "clip_score[model=ViT-B-32,pretrained=openai,")
    assert f"pretrained={tmp_path / 'openai'}," in metric_from_spec("clip_score:model=mine,pretrained=./openai").id


def test_a_rescore_asked_again_after_one_was_cut_off_goes_on_with_it_and_says_so(tmp_path, monkeypatch):
    from harness import evaluate as ev

    with Ledger.open(tmp_path / "run") as ledger:
        keys = [job.key for job in _add_noise_jobs(ledger)]
        ledger.put_scores([Score(k, "health", 0.25) for k in keys])
        real, calls = ev.item_for, []

        def cut_off(ledger, job):
            calls.append(job.key)
            if len(calls) > 1:
                raise KeyboardInterrupt
            return real(ledger, job)

        monkeypatch.setattr(ev, "item_for", cut_off)
        with pytest.raises(KeyboardInterrupt):
            evaluate(ledger, ["health"], log=lambda m: None, chunk=1, rescore=True)
        monkeypatch.setattr(ev, "item_for", real)
        logged: list[str] = []
        (summary,) = evaluate(ledger, ["health"], log=logged.append, rescore=True)
        assert summary.scored == 2 and summary.skipped == 1 and "going on with the rescore begun" in logged[0]
        assert set(ledger.scores_frame()["value"]) == {1.0}


def test_a_score_written_in_the_instant_a_rescore_begins_is_scored_again(tmp_path, monkeypatch):
    """The clock gives the scores already there and the rescore's start the same time: the rescore
    still scores every image (it cannot tell which came first, so it counts them as not rescored)."""
    from harness import evaluate as ev
    from harness.ledger import store

    frozen = lambda: "2026-11-25T10:00:00.000000+00:00"  # noqa: E731
    monkeypatch.setattr(store, "_now", frozen)
    monkeypatch.setattr(ev, "_now", frozen)
    with Ledger.open(tmp_path / "run") as ledger:
        keys = [job.key for job in _add_noise_jobs(ledger)]
        ledger.put_scores([Score(k, "health", 0.25) for k in keys])
        (summary,) = evaluate(ledger, ["health"], log=lambda m: None, rescore=True)
        assert summary.scored == 3 and summary.skipped == 0
        assert set(ledger.scores_frame()["value"]) == {1.0}


def test_rescore_scores_every_image_again_and_an_interrupted_one_goes_on_where_it_stopped(tmp_path, monkeypatch):
    """A metric whose code changed (the toy oracles now score an image with no shape 0, not NaN): `eval
    --rescore` replaces every score; cut off after one chunk, the next eval rescores only the rest."""
    from typer.testing import CliRunner

    from harness import evaluate as ev
    from harness.cli import app

    with Ledger.open(tmp_path / "run") as ledger:
        keys = [job.key for job in _add_noise_jobs(ledger)]
        ledger.put_scores([Score(k, "health", 0.25) for k in keys])
    assert CliRunner().invoke(app, ["eval", str(tmp_path / "run"), "-m", "health"]).exit_code == 0
    with Ledger.open(tmp_path / "run", readonly=True) as ledger:  # plain eval: scored already, kept
        assert set(ledger.scores_frame()["value"]) == {0.25}

    calls = []
    real = ev.item_for

    def cut_off(ledger, job):  # the second chunk never comes: Ctrl-C
        calls.append(job.key)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(ledger, job)

    monkeypatch.setattr(ev, "item_for", cut_off)
    with Ledger.open(tmp_path / "run") as ledger, pytest.raises(KeyboardInterrupt):
        evaluate(ledger, ["health"], log=lambda m: None, chunk=1, rescore=True)
    monkeypatch.setattr(ev, "item_for", real)
    with Ledger.open(tmp_path / "run") as ledger:
        values = ledger.scores_frame().set_index("key")["value"]
        assert values[calls[0]] == 1.0 and (values.drop(calls[0]) == 0.25).all()  # one rescored, none lost
        logged: list[str] = []
        (summary,) = evaluate(ledger, ["health"], log=logged.append)  # no --rescore: goes on with it
        assert summary.scored == 2 and summary.skipped == 1 and "going on with the rescore begun" in logged[0]
        assert set(ledger.scores_frame()["value"]) == {1.0}
        (done,) = evaluate(ledger, ["health"], log=lambda m: None)
        assert done.scored == 0 and done.skipped == 3  # finished: an eval scores nothing again
    r = CliRunner().invoke(app, ["eval", str(tmp_path / "run"), "-m", "health", "--rescore"])
    assert r.exit_code == 0 and "health: 3 images scored" in r.output, r.output


def test_the_summary_line_counts_images_a_metric_does_not_apply_to_apart_from_nan(capsys):
    from collections import Counter

    from harness.cli import _print_metric_summaries
    from harness.evaluate import MetricSummary

    reason = "item has no init image (only img2img items can be scored by this metric)"
    summary = MetricSummary("clip_image_similarity[model=tiny,pretrained=tiny]", scored=24, nan=1,
                            reasons=Counter({"image is blank": 1}), mean=0.9, not_applicable=8,
                            not_applicable_reasons=Counter({reason: 8}))
    _print_metric_summaries([summary], this_pass=False)
    assert capsys.readouterr().out == (f"clip_image_similarity[model=tiny,pretrained=tiny]: 24 images scored, 1 NaN "
                                       f"(1x image is blank), 8 not applicable (8x {reason}); mean 0.9\n")
    small = MetricSummary("watermark", scored=4, nan=4, reasons=Counter({"image too small": 4}))
    _print_metric_summaries([small], this_pass=False)
    assert capsys.readouterr().out == ("watermark: 4 images scored, 4 NaN (4x image too small); no mean: no score "
                                       "is a number\n")
