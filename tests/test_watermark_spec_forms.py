"""One set of watermark messages written two ways is one metric, and one payload written two ways is
refused as given twice (it would count twice in the correction)."""

import pytest

from harness.metrics import metric_from_spec


@pytest.mark.parametrize("a, b", [
    ("watermark", "watermark:messages=sdxl+sdv2+sdv1"),          # same messages, other order
    ("watermark:messages=hello", "watermark:messages=text:hello"),  # `hello` and `text:hello` are one message
])
def test_one_message_set_written_two_ways_is_one_metric(a, b):
    assert metric_from_spec(a).id == metric_from_spec(b).id


@pytest.mark.parametrize("spec", ["watermark:messages=sdv1+text:StableDiffusionV1",
                                  "watermark:messages=sdv2+text:SDV2"])
def test_a_preset_and_its_own_payload_as_text_are_one_message_given_twice(spec):
    with pytest.raises(ValueError, match="given twice"):
        metric_from_spec(spec)


def test_the_canonical_spelling_keeps_presets_first_and_reads_back_the_same_messages():
    from harness.metrics.watermark import canonical_messages, resolve_messages

    assert canonical_messages("zeta+sdxl+text:alpha+sdv1") == "sdv1+sdxl+text:alpha+text:zeta"
    assert canonical_messages("sdv1+sdv2+sdxl") == "sdv1+sdv2+sdxl"  # the default's id is unchanged
    again = canonical_messages(canonical_messages("hello+sdv2"))
    assert again == "sdv2+text:hello"
    assert [m.name for m in resolve_messages(again.split("+"))] == ["sdv2", "text:hello"]
