"""Experiment files: validation catalogue and planning, without loading a model."""

from pathlib import Path

import pytest
from PIL import Image

from harness.checkpoints import CheckpointError, CheckpointRef
from harness.cli import _user_errors
from harness.experiment import ExperimentError, load_experiment
from harness.plan import make_plan, shard

ROOT = Path(__file__).resolve().parents[1]


def fake_resolve(name, base_dir=None):
    return CheckpointRef(name=name, kind="builtin", source=name, fingerprint=f"fp-{name}", native_size=512,
                         family="sd1")


def fake_hash(path, w, h):
    return f"hash-{Path(path).name}-{w}x{h}"


def write(tmp_path, text, name="exp.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def problems(tmp_path, text):
    with pytest.raises(ExperimentError) as e:
        load_experiment(write(tmp_path, text))
    return e.value.problems, str(e.value)


def test_an_entry_of_the_wrong_type_hides_no_other_entrys_problem(tmp_path):
    """A number among the checkpoints or metrics is a problem of its own entry; the names beside it are still
    checked (a misspelt one gets its "did you mean"), each under its own index."""
    found, _ = problems(tmp_path, 'prompt = "a"\ncheckpoints = ["tiny", 5, "tinny"]\n'
                                  'metrics = ["health", 3, "clip_scor", [], "health", "watermark:alpha=0.001", "watermark"]')
    assert found[0] == "key 'checkpoints[1]': got 5, expected a checkpoint name, hub id or path"
    assert found[1].startswith("key 'checkpoints[2]': unknown checkpoint 'tinny' (did you mean 'tiny'?)")
    assert found[2] == "key 'metrics[1]': got 3, expected a metric name such as \"clip_score\""
    assert found[3].startswith("key 'metrics[2]': 'clip_scor': unknown metric 'clip_scor' (did you mean 'clip_score'?)")
    assert found[4:] == [
        "key 'metrics[3]': got [], expected a metric name such as \"clip_score\"",
        "key 'metrics[6]': 'watermark' is 'watermark:alpha=0.001' (metrics[5]) written another way (both are "
        "watermark[messages=sdv1+sdv2+sdxl,alpha=0.001]); give each metric once",
        "key 'metrics': got ['health', 3, 'clip_scor', [], 'health', 'watermark:alpha=0.001', 'watermark'], expected "
        "each entry once (repeated: 'health')"], found
    found, _ = problems(tmp_path, 'prompt = "a"\ncheckpoints = ""')  # one name, not a list: no index
    assert found == ["key 'checkpoints': got '', expected a checkpoint name, hub id or path"]


def test_demo_experiment_loads_and_plans():
    exp = load_experiment(ROOT / "experiments" / "demo.toml")
    plan = make_plan(exp, resolve=fake_resolve, init_hash=fake_hash)
    assert len(plan.jobs) == 12 * 4 + 12 * 4 * 2  # 12 prompts x 4 seeds; img2img at two strengths
    assert plan.factors == ("color", "shape", "artist")
    assert len(plan.groups()) == 3
    assert exp.compare_metrics and set(exp.compare_metrics) <= set(exp.metrics)


@pytest.mark.parametrize("text, expected", [
    ('prompt = "a"\nstpes = 3', "unknown key 'stpes'; did you mean 'steps'?"),
    ('prompt = "a"\nsteps = 0', "key 'steps': got 0, expected an integer in [1, 1000]"),
    ('prompt = "a"\nsteps = "20"', "key 'steps': got '20', expected an integer"),
    ('prompt = "a"\nguidance = true', "key 'guidance': got True, expected a number"),
    ('prompt = "a"\nwidth = 500', "key 'width': got 500, expected a multiple of 8"),
    ('prompt = "a"\nmode = "inpaint"', "key 'mode': got 'inpaint', expected 'txt2img', 'img2img'"),
    ('prompt = "a"\ndtype = "fp8"', "key 'dtype': got 'fp8', expected one of 'auto', 'fp32'"),
    ('prompt = "a"\nseeds = [1, 1]', "key 'seeds': got [1, 1], expected distinct seeds"),
    ('prompt = "a"\nseeds = { start = 3 }', "key 'seeds.count': missing"),
    ('prompt = "a"\nexpand = "sample"', "key 'sample': missing"),
    ('prompt = "a"\nmode = "img2img"', "key 'init_images': missing"),
    ('prompt = "a"\nmode = "img2img"\ninit_images = "nope/*.png"\nstrengths = [1.5]',
     "key 'strengths': got [1.5], expected a list of numbers in (0, 1]"),
    ('prompt = "a"\nbatch_size = 0', "key 'batch_size': got 0, expected 'auto' or an integer >= 1"),
    ('prompt = "a"\nstreams = 0', "key 'streams': got 0, expected 'auto' or an integer in [1, 64]"),
    ('prompt = "a"\nmetrics = ["health"]\ncompare_metrics = ["clip_score"]',
     "key 'compare_metrics': got ['clip_score'], expected a list of entries of `metrics` (written the same way); "
     "not in metrics: 'clip_score' (add them to `metrics`"),
    ('prompt = "a"\nmetrics = ["watermark:alpha=0.001", "watermark"]',
     "key 'metrics[1]': 'watermark' is 'watermark:alpha=0.001' (metrics[0]) written another way (both are "
     "watermark[messages=sdv1+sdv2+sdxl,alpha=0.001]); give each metric once"),
    ('prompt = "a"\nwidth = 120\nwatermark = "sdv1"', "key 'watermark': 'sdv1' cannot be embedded in the 120x512 "
     "images key 'width/height' makes (image smaller than 256x256 in area: under 65536 pixels"),
    ('prompt = "a"\nwatermark = "sdv2"\n[checkpoint.tiny]\nheight = 64',
     "key 'watermark': 'sdv2' cannot be embedded in the 512x64 images key 'checkpoint.tiny.width/height' makes"),
    ('prompt = "a"\n[randomize]\nstrength = [0.8, 0.2]', "key 'randomize.strength'"),
    ('prompt = "a"\n[randomize]\nstepz = [1, 2]', "unknown key 'randomize.stepz'; did you mean 'randomize.steps'?"),
    ('prompt = "a"\ncheckpoints = ["tiny"]\n[checkpoint.tinny]\nwidth = 768',
     "table '[checkpoint.tinny]': 'tinny' is not in checkpoints; did you mean 'tiny'?"),
    ('prompt = "a"\ncheckpoints = ["tiny"]\n[checkpoint.tinny]\nstrength = 0.5',  # its keys are checked too
     "unknown key 'checkpoint.tinny.strength'"),
    ('prompt = "@missing.txt"', "key 'prompt': got '@missing.txt', expected an existing template file"),
    ('steps = 3', "key 'prompt': missing"),
    ('prompt = "a"\nscheduler = "eulr"', "key 'scheduler': got 'eulr', expected one of ddim"),
    ('prompt = "a"\ncheckpoints = ["tiny"]\n[checkpoint.tiny]\nscheduler = "foo"',
     "key 'checkpoint.tiny.scheduler': got 'foo', expected one of ddim"),
    ('prompt = "a"\nmetrics = ["health", "clip_scor:model=tiny"]',
     "key 'metrics[1]': 'clip_scor:model=tiny': unknown metric 'clip_scor' (did you mean 'clip_score'?)"),
    ('prompt = "a"\nmetrics = ["clip_score:model=tiny,bogus=1"]',
     "key 'metrics[0]': 'clip_score:model=tiny,bogus=1': metric 'clip_score' has no option(s) 'bogus'"),
    ('prompt = "a"\n[[stages]]\nname = "up"\nfrom = "main"\nprompt = "b"\ntop_k = 1\nmetric = "nosuch"',
     "key 'stages[0].metric': 'nosuch': unknown metric 'nosuch'"),
    ('prompt = "a"\ncheckpoint = "tiny"', "key 'checkpoint': got 'tiny', expected tables of per-checkpoint overrides"),
    ('prompt = "a"\nmode = "img2img"\ninit_images = "nope/*.png"\nstrengths = [0.1]\nsteps = 3',
     "key 'strengths': strength 0.1 with steps = 3 runs int(0.1 * 3) = 0 denoising steps; img2img needs "
     "strength * steps >= 1 (steps >= 10 at this strength, or strength >= 0.334)"),
    ('prompt = "a"\nmode = "img2img"\ninit_images = "nope/*.png"\nstrengths = [0.2]\nsteps = 3',
     "(steps >= 5 at this strength, or strength >= 0.334)"),  # 0.333 * 3 runs 0 steps: the bound rounds up
    ('prompt = "a"\nmode = "img2img"\ninit_images = "nope/*.png"\nstrengths = [0.5, 0.3, 0.35]\nsteps = 10',
     "key 'strengths': strengths 0.3 and 0.35 with steps = 10 both run 3 denoising steps (img2img runs "
     "int(strength * steps)), so their images would be identical; steps = 12 tells them apart, or drop one"),
    ('prompt = "a"\nsteps = 10\n[checkpoint.tiny]\nsteps = 4\n[[stages]]\nprompt = "__parent__, b"\n'
     'strengths = [0.5, 0.6]', "key 'stages[0].strengths': strengths 0.5 and 0.6 with steps = 4 both run 2"),
    ('prompt = "a"\ndevice = "gpu"', "key 'device': got 'gpu', expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"),
    ('prompt = "a"\nnegative_prompt = "{blurry|sharp}"\nguidance = 1.0',
     "key 'negative_prompt': key 'guidance' is 1, and at guidance <= 1 no classifier-free guidance runs"),
    ('prompt = "a"\nnegative_prompt = "blurry"\n[checkpoint.tiny]\nguidance = 0.5',
     "key 'negative_prompt': the checkpoints' guidance is tiny 0.5, and at guidance <= 1"),
    ('prompt = "a"\nnegative_prompt = "blurry"\n[randomize]\nguidance = [0.0, 1.0]',
     "key 'negative_prompt': key 'randomize.guidance' draws at most 1, and at guidance <= 1"),
    ('prompt = "a"\nnegative_prompt = "blurry"\n[randomize]\nguidance = [0.5, 1.04]',  # draws round to 0.1
     "key 'negative_prompt': key 'randomize.guidance' draws at most 1, and at guidance <= 1"),
    ('prompt = "a"\nguidance = 1\n[[stages]]\nprompt = "__parent__, b"\nstrengths = [0.5]\nnegative_prompt = "x"',
     "key 'stages[0].negative_prompt': key 'guidance' is 1, and at guidance <= 1"),
    ('prompt = "a"\nsteps = 20\n[[stages]]\nprompt = "__parent__, b"\nstrengths = [0.04]',
     "key 'stages[0].strengths': strength 0.04 with steps = 20 runs int(0.04 * 20) = 0"),
    ('prompt = "a"\nsteps = 10\n[checkpoint.tiny]\nsteps = 3\n[[stages]]\nprompt = "__parent__, b"\nstrengths = [0.2]',
     "key 'stages[0].strengths': strength 0.2 with steps = 3 runs int(0.2 * 3) = 0"),
    ('prompt = "a"\nmode = "img2img"\ninit_images = "nope/*.png"\nstrengths = [0.3]\nsteps = 10\n'
     '[randomize]\nsteps = [1, 2]', "key 'strengths': strength 0.3 with steps = 1 runs int(0.3 * 1) = 0"),
    ('prompt = "a"\n[[stages]]\nprompt = "__parent__"\nseeds = [1, 1]', "key 'stages[0].seeds': got [1, 1]"),
    ('prompt = "a"\n[[stages]]\nprompt = "__parent__, b"\nstrengths = [0.5]\ntop_k = 1\n'
     'metric = "clip_image_similarity:model=tiny"',
     "key 'stages[0].metric': 'clip_image_similarity:model=tiny' compares an image with its init image, but "
     "the stage's source is txt2img"),
    ('prompt = "a"\n[randomize]\ndraws = 3\nguidance = [5.0, 5.04]',
     "key 'randomize.draws': got 3, but the ranges give every image only one setting"),
    ('prompt = "a"\n[randomize]\ndraws = 2', "key 'randomize.draws': got 2, but the ranges give every image only one"),
    ('prompt = "a"\nmode = ["img2img"]\ninit_images = "i.png"\n[randomize]\ndraws = 2\nstrength = [0.305, 0.306]',
     "key 'randomize.draws': got 2, but the ranges give every image only one setting"),  # every draw rounds to 0.31
    ('prompt = "a"\n[randomize]\ndraws = 3\nsteps = [4, 5]',
     "key 'randomize.draws': got 3, but the ranges give txt2img images only 2 different settings"),
    ('prompt = "a"\nseeds = { count = 1, start = 9223372036854775808 }',
     "key 'seeds.start': got 9223372036854775808, expected start + count <= 2**63"),
    ('prompt = "a"\nstrengths = [0.3]', "key 'strengths': set but mode has no 'img2img'"),
    ('prompt = "a"\nmode = "img2img"\ninit_images = []', "key 'init_images': got [], expected a path, folder, glob "
     "or a non-empty list of them"),
    ('prompt = "a"\nmode = "img2img"\ninit_images = ""', "key 'init_images': got '', expected a path"),
    ('prompt = "a"\nmode = ["txt2img", "img2img"]\ninit_images = [" "]', "key 'init_images': got [' ']"),
    ('prompt = "a"\nmode = ["img2img", "img2img"]\ninit_images = "i.png"',
     "key 'mode': got ['img2img', 'img2img'], expected each entry once (repeated: 'img2img')"),
    ('prompt = "a"\nmode = "img2img"\ninit_images = "i.png"\nstrengths = [0.5, 0.7, 0.5]',
     "key 'strengths': got [0.5, 0.7, 0.5], expected each entry once (repeated: 0.5)"),
    ('prompt = "a"\nmetrics = ["health", "health"]', "key 'metrics': got ['health', 'health'], expected each entry once"),
    ('prompt = "a"\n[[stages]]\nprompt = "__parent__, b"\nstrengths = [0.5, 0.5]', "key 'stages[0].strengths': got "
     "[0.5, 0.5], expected each entry once"),
    ('prompt = "a"\nnegative_prompt = "blurry"\nguidance = 1.0\n[randomize]\nguidance = [1.0, 9.0]\n[[stages]]\n'
     'prompt = "__parent__, b"', "key 'stages[0].negative_prompt': not set, so the stage takes the experiment's "
     "negative prompt with the fixed guidance, not [randomize]'s (key 'guidance' is 1; negative_prompt = \"\" leaves "
     "it out), and at guidance <= 1 no classifier-free guidance runs"),
    ('prompt = "a"\nprompt_seed = 3', "key 'prompt_seed': set but expand is \"all\", which samples nothing"),
    ('prompt = "a"\n[[stages]]\nprompt = "__parent__, b"\nmetric = "health"',
     "key 'stages[0].metric': set without top_k, so it ranks nothing"),
    ('prompt = "a"\n[randomize]\nsteps = [4, 8]\n[checkpoint.tiny]\nsteps = 6',
     "key 'checkpoint.tiny.steps': unused, as key 'randomize.steps' draws the steps of every image"),
    ('prompt = "a"\nsteps = 10\n[randomize]\nsteps = [2, 4]',
     "key 'steps': unused, as key 'randomize.steps' draws the steps of every image (no stage uses fixed steps)"),
    ('prompt = "a"\nguidance = 7.5\n[randomize]\nguidance = [5.0, 9.0]',
     "key 'guidance': unused, as key 'randomize.guidance' draws the guidance of every image"),
    ('prompt = "a"\n[randomize]\nguidance = [4.0, 8.0]\n[checkpoint.tiny]\nguidance = 6.0',
     "key 'checkpoint.tiny.guidance': unused, as key 'randomize.guidance' draws the guidance of every image"),
    ('prompt = "a"\nmode = "img2img"\ninit_images = "i.png"\nstrengths = [0.5]\n[randomize]\nstrength = [0.3, 0.6]',
     "key 'strengths': unused, as key 'randomize.strength' draws every img2img image's strength"),
    ('prompt = "a {@color: red|blue} cat"\n[[stages]]\nprompt = "__parent__, {@color: gold|silver} light"',
     "key 'stages[0].prompt': factor 'color' is also a factor of the images it starts from (stage main)"),
    ('prompt = "a {red|blue} cat"\n[[stages]]\nname = "up"\nprompt = "__parent__, {x|y}"\n[[stages]]\n'
     'prompt = "__parent__, {red|blue}"', "key 'stages[1].prompt': factor 'red|blue' is also a factor of the "
     "images it starts from (stage up)"),
])
def test_validation_names_key_value_and_expectation(tmp_path, text, expected):
    found, message = problems(tmp_path, text)
    assert any(expected in p for p in found), found
    assert str(tmp_path / "exp.toml") in message


def test_settings_that_are_fine_load(tmp_path):
    exp = load_experiment(write(tmp_path, 'prompt = "a"\ndevice = "cuda:1"\nnegative_prompt = "blurry"\n'
                                          '[randomize]\nguidance = [0.0, 3.0]'))  # some draws read it
    assert exp.device == "cuda:1" and exp.negative_prompt == "blurry"
    assert load_experiment(write(tmp_path, 'prompt = "a"\nguidance = 1.0', "g1.toml")).guidance == 1.0
    # a stage without steps of its own takes the checkpoint's fixed steps: not unused beside [randomize]
    staged = load_experiment(write(tmp_path, 'prompt = "a {x|y}"\n[randomize]\nsteps = [4, 8]\n[checkpoint.tiny]\n'
                                             'steps = 6\n[[stages]]\nprompt = "__parent__, {a|b}"', "st.toml"))
    assert staged.overrides["tiny"]["steps"] == 6 and len(staged.stages) == 1
    sampled = load_experiment(write(tmp_path, 'prompt = "{a|b|c}"\nexpand = "sample"\nsample = 2\nprompt_seed = 4',
                                    "s.toml"))
    assert sampled.prompt_seed == 4


def test_the_run_folder_copy_is_the_text_that_was_loaded_not_a_later_edit(tmp_path):
    path = write(tmp_path, 'prompt = "a"\nsteps = 2  # as run\n')
    exp = load_experiment(path)
    path.write_text('prompt = "a"\nsteps = 3\n')  # edited while the run plans
    copy = exp.run_copy()
    assert "steps = 2  # as run" in copy and "steps = 3" not in copy


def test_a_bad_value_is_reported_once_not_also_as_missing(tmp_path):
    for text, key in (('prompt = "a"\nexpand = "sample"\nsample = 0', "'sample'"),
                      ('prompt = "a"\nseeds = { count = 0 }', "'seeds.count'")):
        found, _ = problems(tmp_path, text)
        assert len([p for p in found if key in p]) == 1 and "missing" not in " ".join(found), found


@pytest.mark.parametrize("text, key", [
    ('prompt = 5', "'prompt'"),
    ('prompt = ""', "'prompt'"),
    ('prompt = "a"\n[[stages]]\nprompt = 5', "'stages[0].prompt'"),
    ('prompt = "a"\n[[stages]]\nprompt = "b"\ntop_k = 1\nmetric = 5', "'stages[0].metric'"),
])
def test_a_value_of_the_wrong_type_is_reported_once_not_also_as_missing(tmp_path, text, key):
    found, _ = problems(tmp_path, text)
    assert len(found) == 1 and f"key {key}: got" in found[0] and "missing" not in found[0], found


def test_a_misspelt_checkpoint_names_the_file_the_key_and_the_closest_name(tmp_path):
    found, message = problems(tmp_path, 'prompt = "a"\ncheckpoints = ["tinyy"]')
    assert found == [f"key 'checkpoints[0]': {found[0].split(': ', 1)[1]}"]
    assert "unknown checkpoint 'tinyy' (did you mean 'tiny'?)" in found[0]
    assert message.startswith(f"{tmp_path / 'exp.toml'}: 1 problem")
    found, _ = problems(tmp_path, 'prompt = "a"\ncheckpoints = "./model/mine"')
    assert found[0].startswith("key 'checkpoints': checkpoint './model/mine': no file or folder at")


def test_checkpoint_problems_are_reported_with_the_other_problems(tmp_path):
    (tmp_path / "weights").mkdir()  # a folder that is not a diffusers pipeline
    found, _ = problems(tmp_path, 'prompt = "a"\nstpes = 3\ncheckpoints = ["tiny", "sd15-randm", "weights"]')
    assert found[0] == "unknown key 'stpes'; did you mean 'steps'?"
    assert "key 'checkpoints[1]': unknown checkpoint 'sd15-randm' (did you mean 'sd15-random'?)" in found[1]
    assert found[2].startswith("key 'checkpoints[2]': checkpoint 'weights': folder") and "model_index.json" in found[2]
    assert len(found) == 3


def test_checkpoint_paths_are_checked_from_base_dir(tmp_path):
    (tmp_path / "models" / "mine").mkdir(parents=True)  # no model_index.json: not a pipeline
    found, _ = problems(tmp_path, 'prompt = "a"\nbase_dir = "models"\ncheckpoints = ["./mine", "./mien"]')
    assert found[0].startswith(f"key 'checkpoints[0]': checkpoint './mine': folder {tmp_path / 'models' / 'mine'} ")
    assert found[1] == (f"key 'checkpoints[1]': checkpoint './mien': no file or folder at "
                        f"{tmp_path / 'models' / 'mien'} (did you mean './mine'?)")


def test_a_folder_given_as_the_experiment_is_named_as_a_folder_with_its_experiment_files(tmp_path):
    with pytest.raises(ExperimentError) as err:
        load_experiment(tmp_path)
    assert err.value.problems == ["is a folder; expected an experiment file (.toml), and this folder holds no "
                                  ".toml files"]
    for name in ("b.toml", "a.toml"):
        (tmp_path / name).write_text('prompt = "a"')
    with pytest.raises(ExperimentError) as err:
        load_experiment(tmp_path)
    assert err.value.problems == [f"is a folder; expected an experiment file (.toml) such as {tmp_path / 'a.toml'}; "
                                  "the .toml files in it: a.toml, b.toml"]
    assert "file not found" not in str(err.value)


def test_a_missing_experiment_file_suggests_a_close_one(tmp_path):
    (tmp_path / "study.toml").write_text('prompt = "a"')
    with pytest.raises(ExperimentError, match=r"file not found; did you mean '.*study\.toml'\?"):
        load_experiment(tmp_path / "stduy.toml")
    (tmp_path / "pyproject.toml").write_text("[project]\n")
    with pytest.raises(ExperimentError) as err:
        load_experiment(tmp_path / "nope.toml")
    assert err.value.problems == ["file not found"]


def test_stage_templates_are_checked_when_the_experiment_loads_at_their_own_position(tmp_path):
    text = 'prompt = "a"\n[[stages]]\nprompt = "__parent__, {sharp focus|highly detailed"\n'
    found, _ = problems(tmp_path, text)
    (problem,) = [p for p in found if "stages[0].prompt" in p]
    assert "template error at line 1, column 13" in problem and "unbalanced" in problem
    assert "__parent__, {sharp focus" in problem  # the stage's own text, not a parent's prompt


def test_stage_wildcards_and_choose_k_are_checked_when_the_experiment_loads(tmp_path):
    """A stage's unknown wildcard and impossible choose-k are reported at load, before the main images
    are made, each at its column of the stage's own text, in both of its templates."""
    (tmp_path / "moods.txt").write_text("calm\n__nosuch__\n")
    text = ('prompt = "a"\n[[stages]]\nprompt = "__parent__, __colorz__"\n'
            'negative_prompt = "blurry, __moods__"\n[[stages]]\nprompt = "__parent__, {3$$a|b}"\n')
    found, _ = problems(tmp_path, text)
    (prompt,) = [p for p in found if "key 'stages[0].prompt'" in p]
    assert "line 1, column 13 of the template: unknown wildcard __colorz__" in prompt
    (second,) = [p for p in found if "key 'stages[1].prompt'" in p]
    assert "line 1, column 14 of the template: choose-k asks for 3 but the alternation has only 2" in second
    (negative,) = [p for p in found if "key 'stages[0].negative_prompt'" in p]
    assert f"{tmp_path / 'moods.txt'}:2:1: unknown wildcard __nosuch__" in negative


def test_an_inline_prompt_error_found_when_planning_says_it_is_in_the_prompt(tmp_path):
    """An unknown wildcard is found when the experiment loads, with every other problem; one whose file
    went away after loading is found when planning, still placed in the prompt."""
    from harness.grammar import GrammarError

    with pytest.raises(ExperimentError) as err:
        load_experiment(write(tmp_path, 'name = "x"\nseeds = [1]\nsteps = 0\n\nprompt = "a cat, __nosuch__"'))
    assert "key 'steps': got 0" in str(err.value)
    assert ("key 'prompt': template error at line 1, column 8 of the template (written on line 5 of the file): "
            "unknown wildcard __nosuch__" in str(err.value))
    (tmp_path / "nosuch.txt").write_text("a\nb\n")
    exp = load_experiment(write(tmp_path, 'name = "x"\nseeds = [1]\n\nprompt = "a cat, __nosuch__"'))
    (tmp_path / "nosuch.txt").unlink()
    with pytest.raises(GrammarError) as err:
        make_plan(exp, resolve=fake_resolve)
    assert f"{tmp_path / 'exp.toml'} (prompt):1:8" in str(err.value)


def test_sampling_more_prompts_than_the_template_has_names_the_key(tmp_path):
    exp = load_experiment(write(tmp_path, 'prompt = "a {red|blue} car"\nexpand = "sample"\nsample = 5'))
    with pytest.raises(ExperimentError) as err:
        make_plan(exp, resolve=fake_resolve)
    assert "key 'sample': 5: cannot sample 5 distinct prompts: the template has only 2" in str(err.value)
    assert str(tmp_path / "exp.toml") in str(err.value)


def test_experiment_files_may_start_with_a_byte_order_mark_and_must_be_utf8(tmp_path):
    (tmp_path / "bom.toml").write_bytes("\ufeffprompt = \"a cat\"\n".encode("utf-8"))
    assert load_experiment(tmp_path / "bom.toml").prompt == "a cat"
    (tmp_path / "latin1.toml").write_bytes('prompt = "caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(ExperimentError, match=r"not UTF-8 text \(byte 0xe9 at offset 13\)"):
        load_experiment(tmp_path / "latin1.toml")
    (tmp_path / "p.txt").write_bytes("caf\xe9".encode("latin-1"))
    found, _ = problems(tmp_path, 'prompt = "@p.txt"')
    assert any("key 'prompt'" in p and "not UTF-8" in p for p in found)


def test_wildcards_next_to_a_template_file_in_another_folder(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "tpl.txt").write_text("a __w__\n")
    (tmp_path / "t" / "w.txt").write_text("cat\ndog\n")
    exp = load_experiment(write(tmp_path, 'prompt = "@t/tpl.txt"'))
    assert sorted(j.prompt for j in make_plan(exp, resolve=fake_resolve).jobs) == ["a cat", "a dog"]


def test_all_problems_are_reported_at_once(tmp_path):
    found, _ = problems(tmp_path, 'prompt = "a"\nsteps = -1\nwidth = 7\nfoo = 1')
    assert len(found) >= 3


def test_toml_syntax_error_names_file_and_line(tmp_path):
    found, message = problems(tmp_path, 'prompt = "a\nsteps = 3')
    assert "not valid TOML" in found[0] and "line 1" in found[0]


def test_a_grammar_escape_in_a_double_quoted_string_is_pointed_at_and_explained(tmp_path):
    found, _ = problems(tmp_path, 'seeds = [1]\nprompt = "a \\(cat\\) {red|blue}"')
    assert found[0].startswith("not valid TOML: Unescaped '\\' in a string (at line 2, column 13)")
    assert "write the template in single quotes, prompt = 'a \\(cat\\)'" in found[0]
    exp = load_experiment(write(tmp_path, "prompt = 'a \\(cat\\) {red|blue}'"))  # as the error says
    assert sorted(j.prompt for j in make_plan(exp, resolve=fake_resolve).jobs) == ["a \\(cat\\) blue",
                                                                                "a \\(cat\\) red"]


def test_prompt_from_file_and_wildcards_next_to_experiment(tmp_path):
    (tmp_path / "p.txt").write_text("a __pets__\n")
    (tmp_path / "pets.txt").write_text("cat\ndog\n")
    exp = load_experiment(write(tmp_path, 'prompt = "@p.txt"\nseeds = [1, 2]'))
    plan = make_plan(exp, resolve=fake_resolve)
    assert sorted({j.prompt for j in plan.jobs}) == ["a cat", "a dog"] and len(plan.jobs) == 4
    assert plan.jobs[0].factors == {"pets": "cat"}


def _copy_of(exp, folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "experiment.toml").write_text(exp.run_copy())
    return load_experiment(folder / "experiment.toml")


def test_the_run_folder_copy_plans_the_same_images_from_another_folder(tmp_path):
    """A run keeps the experiment with base_dir pinned: its @file prompt, wildcards and init images
    still resolve, comments survive, and it is the same experiment (same settings, same job keys)."""
    from PIL import Image
    src = tmp_path / "study"
    (src / "in").mkdir(parents=True)
    Image.new("RGB", (64, 64), (9, 9, 9)).save(src / "in" / "a.png")
    (src / "p.txt").write_text("a __pets__\n")
    (src / "pets.txt").write_text("cat\ndog\n")
    exp = load_experiment(write(src, '# my study\nprompt = "@p.txt"\nmode = "img2img"\ninit_images = "in"\n'))
    copy = _copy_of(exp, tmp_path / "elsewhere" / "run")
    assert "# my study" in (tmp_path / "elsewhere" / "run" / "experiment.toml").read_text()
    assert copy.base_dir == src.resolve() and copy.settings == exp.settings
    assert exp.name == "exp" and copy.name == "exp"  # the name the file gave, not "experiment"
    assert copy.init_images == exp.init_images and copy.prompt == exp.prompt

    def keys(e):
        return sorted(j.key for j in make_plan(e, resolve=fake_resolve, init_hash=fake_hash).jobs)
    assert keys(copy) == keys(exp) and len(keys(exp)) == 2
    assert _copy_of(copy, tmp_path / "again").run_copy() == copy.run_copy()  # a copy of a copy is unchanged


@pytest.mark.parametrize("line", ['base_dir = "../data"  # shared inputs', '"base_dir" = "../data"  # shared inputs',
                                  "base_dir = '../data'  # shared inputs", 'base_dir = "../d\\u0061ta"  # shared inputs'])
def test_a_relative_base_dir_is_pinned_in_the_copy(tmp_path, line):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "p.txt").write_text("a dog\n")
    (tmp_path / "exps").mkdir()
    exp = load_experiment(write(tmp_path / "exps", f'{line}\nprompt = "@p.txt"\n'))
    assert exp.base_dir == (tmp_path / "data").resolve() and exp.prompt == "a dog"
    copy = _copy_of(exp, tmp_path / "run")
    assert copy.raw["base_dir"] == str((tmp_path / "data").resolve()) and copy.prompt == "a dog"
    assert "  # shared inputs\n" in (tmp_path / "run" / "experiment.toml").read_text()  # the comment stays


def test_a_base_dir_that_cannot_be_pinned_is_an_error_before_anything_runs(tmp_path):
    (tmp_path / "data").mkdir()
    path = write(tmp_path, 'base_dir = """data"""\nprompt = "a"\n')  # a multi-line string
    with pytest.raises(ExperimentError, match="could not pin 'data'"):
        load_experiment(path)


def test_base_dir_must_be_an_existing_folder(tmp_path):
    found, _ = problems(tmp_path, 'base_dir = "nowhere"\nprompt = "a"')
    assert found[0].startswith("key 'base_dir': got 'nowhere', expected an existing folder")


def test_an_init_image_that_is_not_an_image_is_an_experiment_error(tmp_path):
    (tmp_path / "bad.png").write_text("not an image")
    exp = load_experiment(write(tmp_path, 'prompt = "a cat"\nmode = "img2img"\ninit_images = "bad.png"'))
    with pytest.raises(ExperimentError) as e:
        make_plan(exp, resolve=fake_resolve)
    assert e.value.problems[0].startswith(f"key 'init_images': {tmp_path / 'bad.png'} is not a readable image "
                                          "(UnidentifiedImageError")


def test_three_checkpoints_by_two_strengths_plan_counts(tmp_path):
    (tmp_path / "in").mkdir()
    from PIL import Image
    for n in ("a", "b"):
        Image.new("RGB", (64, 64), (n == "a") * 255).save(tmp_path / "in" / f"{n}.png")
    exp = load_experiment(write(tmp_path, '''
prompt = "{red|blue} cat"
seeds = { count = 3 }
checkpoints = ["tiny", "toy", "sd15-random"]
mode = "img2img"
init_images = "in"
strengths = [0.3, 0.7]
[checkpoint.sd15-random]
width = 768
height = 768
'''))
    plan = make_plan(exp, resolve=fake_resolve)
    assert len(plan.jobs) == 3 * 2 * 2 * 3 * 2  # checkpoints x strengths x prompts x seeds x inits
    assert len(plan.groups()) == 3 * 2
    assert {j.width for j in plan.jobs if j.checkpoint == "sd15-random"} == {768}
    order = list(dict.fromkeys(j.checkpoint for g in plan.groups().values() for j in g))
    assert order == ["tiny", "toy", "sd15-random"]


def test_keys_change_with_pixels_not_with_factors():
    from harness.core import Job
    a = Job("tiny", "fp", "txt2img", "a cat", "", 1, 10, 7.5, "ddim", 64, 64, factors={"x": "1"})
    assert a.key == Job("other-name", "fp", "txt2img", "a cat", "", 1, 10, 7.5, "ddim", 64, 64).key
    assert a.key != Job("tiny", "fp", "txt2img", "a cat", "", 2, 10, 7.5, "ddim", 64, 64).key
    assert a.key != Job("tiny", "fp2", "txt2img", "a cat", "", 1, 10, 7.5, "ddim", 64, 64).key


def test_editing_the_experiment_adds_jobs_by_key(tmp_path):
    p = write(tmp_path, 'prompt = "{a|b} cat"\nseeds = [1]')
    before = {j.key for j in make_plan(load_experiment(p), resolve=fake_resolve).jobs}
    p.write_text('prompt = "{a|b|c} cat"\nseeds = [1]')
    after = {j.key for j in make_plan(load_experiment(p), resolve=fake_resolve).jobs}
    assert before < after and len(after - before) == 1


def test_randomized_parameters_are_seeded_and_in_range(tmp_path):
    text = 'prompt = "{a|b} cat"\nseeds = [1, 2, 3]\n[randomize]\nseed = 5\nsteps = [5, 9]\nguidance = [3.0, 6.0]\ndraws = 2'
    p = write(tmp_path, text)
    jobs = make_plan(load_experiment(p), resolve=fake_resolve).jobs
    again = make_plan(load_experiment(p), resolve=fake_resolve).jobs
    assert [j.key for j in jobs] == [j.key for j in again] and len(jobs) == 12
    assert all(5 <= j.steps <= 9 and 3.0 <= j.guidance <= 6.0 for j in jobs)
    assert len({(j.steps, j.guidance) for j in jobs}) > 3
    # every prompt at one seed and draw is made alike, so comparing prompts pairs images with equal settings
    by_seed_draw: dict = {}
    for j in jobs:
        by_seed_draw.setdefault((j.seed, j.meta["draw"]), set()).add((j.steps, j.guidance))
        assert j.meta["drawn"] == ["guidance", "steps"]
    assert len(by_seed_draw) == 6 and all(len(settings) == 1 for settings in by_seed_draw.values())


def test_randomized_strengths_keep_a_prompts_seeds_in_one_shard_and_one_variant(tmp_path):
    """Strength drawn per seed is not part of a variant: a shard keeps every seed of a prompt, and a stage's
    top_k ranks them against each other."""
    from harness.plan import variant_of

    p = write(tmp_path, 'prompt = "{a|b|c|d} cat"\nseeds = { count = 4 }\nmode = ["img2img"]\n'
                        'init_images = "init.png"\n[randomize]\nstrength = [0.3, 0.9]')
    Image.new("RGB", (64, 64)).save(tmp_path / "init.png")
    jobs = make_plan(load_experiment(p), resolve=fake_resolve, init_hash=fake_hash).jobs
    assert len({j.strength for j in jobs}) == 4 == len({(j.seed, j.strength) for j in jobs})  # one per seed
    assert len({variant_of(j) for j in jobs}) == 4  # one variant per prompt
    for i in range(2):
        part = shard(jobs, i, 2, by_variant=True)
        assert all(sum(j.prompt == k.prompt for k in part) == 4 for j in part)


def test_shards_partition_the_plan(tmp_path):
    p = write(tmp_path, 'prompt = "{a|b|c|d} cat"\nseeds = { count = 5 }')
    jobs = make_plan(load_experiment(p), resolve=fake_resolve).jobs
    parts = [shard(jobs, i, 3) for i in range(3)]
    assert sorted(j.key for part in parts for j in part) == sorted(j.key for j in jobs)


def test_same_weights_twice_is_an_error(tmp_path):
    p = write(tmp_path, 'prompt = "a"\ncheckpoints = ["tiny", "toy"]')
    with pytest.raises(CheckpointError) as e:
        make_plan(load_experiment(p), resolve=lambda n, base_dir=None: fake_resolve("same"))
    assert str(e.value).startswith(str(p)) and "key 'checkpoints[1]': 'toy' holds the same weights as 'tiny'" in str(e.value)
    assert isinstance(e.value, _user_errors())  # the command line prints it in one line, exit 2


def test_the_plan_records_which_factor_sits_inside_which(tmp_path):
    """Nesting in the prompt, the negative prompt (its factors prefixed) and a stage's prompt."""
    path = tmp_path / "e.toml"
    path.write_text('name = "n"\nprompt = "a {cat {@hat: red|blue}|dog}"\nnegative_prompt = "{blurry {x|y}|z}"\n'
                    'seeds = [1]\ncheckpoints = ["tiny"]\n\n[[stages]]\nname = "s"\n'
                    'prompt = "__parent__, {@look: sharp {@how: very|a bit}|soft}"\nstrengths = [0.5]\n')
    plan = make_plan(load_experiment(path), resolve=fake_resolve, init_hash=fake_hash)
    assert plan.nesting == (("cat {red|blue}|dog", "hat"), ("negative:blurry {x|y}|z", "negative:x|y"),
                            ("look", "how"))


def test_a_key_set_twice_is_named_with_its_line_shown(tmp_path):
    (found,), _ = problems(tmp_path, 'prompt = "a cat"\nsteps = 2\n  steps = 3\n')
    assert found == ("not valid TOML: Cannot overwrite a value (at line 3, column 3): the key steps is set twice in "
                     "its table (each key once; delete one of them)\n        steps = 3\n        ^"), found
    (found,), _ = problems(tmp_path, 'prompt = "a cat"\nsteps = 2 4\n')  # another error: its line, a caret
    assert found.endswith("(at line 2, column 11)\n      steps = 2 4\n                ^"), found
