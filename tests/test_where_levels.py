"""Levels named on the command line as the tables show them: `--where` with a factor whose name holds `=`,
a level holding a line break written `\\n`, numbers however written, and `—` for images a factor does not
apply to; a comparison's text keeps such a level on one line."""

import numpy as np
import pandas as pd
import pytest

from harness.columns import where
from harness.stats import paired_compare
from harness.stats.table import matching_levels


def table() -> pd.DataFrame:
    return pd.DataFrame({
        "key": [f"{i:064x}" for i in range(8)],
        "f.x=1|y=2": ["x=1", "y=2"] * 4,
        "f.style": ["line\nbreak", "plain"] * 2 + ["line\nbreak", "plain"] * 2,
        "f.finish": [None, None, "sharp", "soft"] * 2,
        "strength": [0.4, 0.4, 0.6, 0.6] * 2,
        "seed": [1, 1, 1, 1, 2, 2, 2, 2],
        "healthy": True,
        "m.s": np.arange(8, dtype=float),
    })


def test_a_factor_whose_name_holds_an_equals_sign_is_found():
    t = table()
    assert where(t, ["x=1|y=2=y=2"])["f.x=1|y=2"].tolist() == ["y=2"] * 4
    with pytest.raises(ValueError, match=r"--where='colour' is not a factor or parameter"):
        where(t, ["colour=red=blue"])


@pytest.mark.parametrize("condition, keys", [("style=line\\nbreak", [0, 2, 4, 6]), ("strength=.40", [0, 1, 4, 5]),
                                             ("finish=—", [0, 1, 4, 5]), ("finish=soft", [3, 7])])
def test_levels_are_named_as_the_tables_show_them(condition, keys):
    t = table()
    assert where(t, [condition]).index.tolist() == keys


def test_conditions_no_image_meets_together_are_an_error_naming_them_and_each_level_is_checked_on_all_images():
    t = table()
    assert where(t, ["strength=0.4", "seed=2"]).index.tolist() == [4, 5]
    with pytest.raises(ValueError) as e:  # both levels are there: it used to say strength has no level 0.6
        where(t, ["strength=0.4", "strength=0.6"])
    assert str(e.value) == ("--where 'strength=0.4' --where 'strength=0.6': each holds for some images, but no image "
                            "meets them all (two levels of one factor, or levels never made together); an image "
                            "must meet every --where")
    with pytest.raises(ValueError, match=r"finish has no level 'glossy' among the images; its levels: "):
        where(t, ["strength=0.4", "finish=glossy"])  # a level no image has is named as before


def test_nan_is_not_a_name_for_the_images_a_factor_does_not_apply_to():
    with pytest.raises(ValueError, match=r"finish has no level 'nan' among the images"):
        where(table(), ["finish=nan"])


def test_a_baseline_with_a_line_break_is_named_by_its_one_line_spelling_and_the_title_stays_one_line():
    assert matching_levels(["line\nbreak", "plain"], "line\\nbreak") == ["line\nbreak"]
    c = paired_compare(table(), factor="f.style", metric="m.s", baseline="line\\nbreak", n_boot=100,
                       rng=np.random.default_rng(0), pair_on=["seed", "strength"])
    assert c.baseline == "line\nbreak"
    title = c.to_text().splitlines()[0]
    assert title.startswith("m.s by f.style, baseline line\\nbreak (") and title.endswith(")")
