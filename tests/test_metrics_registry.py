"""Metric registry, specs and options: names map to code, and bad input teaches."""

from __future__ import annotations

import subprocess
import sys

import pytest

from harness.metrics import Metric, MetricInfo, Option, get_metric, list_metrics, metric_from_spec, parse_metric_spec
from harness.metrics.base import metric_class, register


def test_unknown_metric_name_lists_the_valid_ones():
    with pytest.raises(KeyError) as error:
        get_metric("clip_scor")
    message = str(error.value)
    assert "unknown metric 'clip_scor'" in message and "did you mean 'clip_score'" in message
    for name in ("clip_score", "clip_image_similarity", "clip_directional", "watermark", "health"):
        assert name in message


def test_unknown_metric_name_points_at_plugins():
    with pytest.raises(KeyError) as error:
        get_metric("bright")
    assert "a plugin metric? load its module with HARNESS_PLUGINS=module" in str(error.value)


def metric_class_named(name: str, options: dict | None = None, score: bool = True) -> type[Metric]:
    """A test-only Metric subclass (not registered) with INFO named `name`."""
    body = {"INFO": MetricInfo(name=name, description="d", unit="u", range=(0.0, 1.0), higher_is_better=True),
            "OPTIONS": options or {}}
    if score:
        body["_score"] = lambda self, items: [(1.0, {}) for _ in items]
    return type("Plugin", (Metric,), body)


@pytest.mark.parametrize("name", ["my metric:v2", "a,b", "x[1]", "-m", "say=\"hi\"", ""])
def test_register_refuses_a_name_that_metric_specs_cannot_read(name):
    with pytest.raises(ValueError) as error:
        register(metric_class_named(name))
    message = str(error.value)
    assert message.startswith(f"metric class Plugin (plugin module {__name__}): metric name {name!r} cannot be given "
                              "to -m or read back from a metric id; a name takes letters, digits, '_', '.' and '-'")
    with pytest.raises(KeyError):
        metric_class(name)


def test_a_registered_name_round_trips_through_specs_and_ids():
    cls = register(metric_class_named("my_metric.v2-b", {"n": Option(3, "a count", parse=int)}))
    assert metric_from_spec("my_metric.v2-b:n=4").id == "my_metric.v2-b[n=4]"
    assert isinstance(metric_from_spec("my_metric.v2-b[n=4]"), cls)


@pytest.mark.parametrize("option, fragment", [
    (Option("x", "n", parse=int), "option n of metric 'bad_default' has default 'x', which its parse refuses "
                                  "(invalid literal for int() with base 10: 'x')"),
    (Option("3", "n", parse=int), "option n of metric 'bad_default' has default '3', which its parse reads back "
                                  "as 3; give the parsed value as the default"),
    (Option("big", "n", choices=("small", "large")), "has default 'big', not one of its choices 'small', 'large'"),
    (Option(None, "n", parse=float, in_id=False), "has default None, which its parse refuses"),
    (Option(1, "n", parse=lambda v: {"a": 1}[v]), "has default 1, which its parse refuses (KeyError: '1')"),
])
def test_register_runs_option_defaults_through_parse(option, fragment):
    with pytest.raises(ValueError, match="^metric class Plugin") as error:
        register(metric_class_named("bad_default", {"n": option}))
    assert fragment in str(error.value)
    with pytest.raises(KeyError):
        metric_class("bad_default")


def test_a_parse_that_refuses_with_any_error_names_the_metric_and_option():
    register(metric_class_named("keyed", {"k": Option(1, "a key", parse=lambda v: {"a": 1, "1": 1}[v])}))
    with pytest.raises(ValueError, match=r"^metric 'keyed' option k='zzz': KeyError: 'zzz' \(a key\)$"):
        metric_from_spec("keyed:k=zzz")


def test_register_refuses_a_class_without_info_or_score():
    with pytest.raises(ValueError, match="needs INFO = MetricInfo\\(name=..."):
        register(type("NoInfo", (Metric,), {"_score": lambda self, items: []}))
    with pytest.raises(ValueError, match=r"define _score\(self, items\) returning one \(value: float, detail: dict\)"):
        register(metric_class_named("no_score", score=False))


def test_list_metrics_gives_metadata_for_every_metric():
    infos = {info.name: info for info in list_metrics()}
    builtin = {"clip_score", "clip_image_similarity", "clip_directional", "watermark", "health",
               "toy_color_match", "toy_shape_match", "toy_background_match", "toy_style_match"}
    assert builtin <= set(infos)  # tests and plugins may register more
    assert all(isinstance(info, MetricInfo) for info in infos.values())
    assert infos["clip_score"].needs == {"image", "prompt"}
    assert infos["clip_directional"].needs == {"image", "init_image", "prompt", "source_prompt"}
    assert infos["clip_image_similarity"].range == (-1.0, 1.0)
    assert infos["watermark"].higher_is_better is False


def test_metric_info_refuses_unknown_inputs():
    with pytest.raises(ValueError, match="unknown inputs.*'mask'"):
        MetricInfo("x", "d", "u", (0, 1), True, frozenset({"image", "mask"}))


def test_spec_with_options_parses_to_name_and_text_options():
    assert parse_metric_spec("clip_score:model=ViT-L-14,pretrained=openai") == (
        "clip_score", {"model": "ViT-L-14", "pretrained": "openai"})
    assert parse_metric_spec("health") == ("health", {})
    assert parse_metric_spec(" watermark : alpha = 0.01 ") == ("watermark", {"alpha": "0.01"})


def test_metric_id_parses_back_to_the_same_metric():
    metric = get_metric("clip_score", model="tiny", scale="2.5", clamp="batch_mean")
    assert metric.id == "clip_score[model=tiny,pretrained=tiny,scale=2.5,clamp=batch_mean]"
    assert metric_from_spec(metric.id).id == metric.id
    assert metric.info.range == (-2.5, 2.5)


@pytest.mark.parametrize("spec, fragment", [
    ("clip_score:scale", "not key=value"),
    ("clip_score:scale=1,scale=2", "given twice"),
    ("", "empty metric spec"),
    (":scale=1", "bad metric name"),
])
def test_malformed_specs_explain_the_expected_form(spec, fragment):
    with pytest.raises(ValueError, match=fragment):
        parse_metric_spec(spec)


@pytest.mark.parametrize("name, options, expected", [
    ("clip_score", {"scale": "abc"}, "option scale='abc': expected a positive finite number, got 'abc'"),
    ("clip_score", {"scale": "-1"}, "option scale='-1': expected a positive finite number, got '-1'"),
    ("clip_score", {"batch_size": "many"}, "option batch_size='many': expected a positive integer, got 'many'"),
])
def test_a_number_option_that_is_not_a_number_says_what_was_expected(name, options, expected):
    with pytest.raises(ValueError) as error:
        get_metric(name, **options)
    assert expected in str(error.value) and "could not convert" not in str(error.value) and "literal" not in str(error.value)


def test_unknown_option_lists_the_valid_ones():
    with pytest.raises(ValueError) as error:
        get_metric("clip_score", scael=2.5)
    assert "'scael'" in str(error.value) and "scale" in str(error.value) and "clamp" in str(error.value)


@pytest.mark.parametrize("options, fragment", [
    ({"scale": "big"}, "scale='big'"),
    ({"scale": "-1"}, "positive"),
    ({"clamp": "mean"}, "image, batch_mean"),
    ({"batch_size": "0"}, "positive integer"),
])
def test_bad_option_values_name_the_option_and_what_was_expected(options, fragment):
    with pytest.raises(ValueError, match=fragment):
        get_metric("clip_score", **options)


def test_watermark_messages_option_is_checked():
    assert get_metric("watermark", messages="sdv1").id == "watermark[messages=sdv1,alpha=0.001]"
    assert get_metric("watermark", messages=["sdv1", "sdxl"]).options["messages"] == "sdv1+sdxl"
    with pytest.raises(ValueError, match="no messages"):
        get_metric("watermark", messages="")


def test_importing_metrics_loads_no_heavy_libraries():
    code = ("import sys, harness.metrics as m; m.list_metrics(); m.get_metric('clip_score', model='tiny'); "
            "print(sorted(k for k in ('torch', 'open_clip', 'cv2', 'imwatermark') if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_harness_metrics_lists_each_option_as_an_experiment_writes_it_with_its_allowed_values():
    from typer.testing import CliRunner

    from harness.cli import app

    out = CliRunner().invoke(app, ["metrics"])
    assert out.exit_code == 0, out.output
    clamp = next(line for line in out.output.splitlines() if line.strip().startswith("clamp = "))
    assert clamp.strip().startswith("clamp = image  ") and clamp.endswith("(one of: image, batch_mean)")
    assert "    scale = 100  " in out.output  # as the metric id writes it, not 100.0
    assert "    text = ''  " in out.output  # an empty default is shown, not left blank
