"""What a researcher meets running a study from the README: names the tables write can be typed back,
estimates and intervals that stay in range, errors that say what to do."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

from harness.core import Job, Score
from harness.ledger import Ledger
from test_report import METRIC, finish

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, cwd=ROOT)


def test_a_pair_on_list_copied_from_comparisons_csv_names_factors_with_commas(tmp_path):
    """`{, by greg rutkowski|}` is the factor `, by greg rutkowski|`: its column name holds a comma, and the
    pair_on that comparisons.csv writes can be pasted back into --pair-on."""
    optional = "f., by greg rutkowski|"
    jobs = [Job("tiny", "fp", "txt2img", f"a {color} cat{artist}", "", seed, 4, 7.5, "ddim", 64, 64,
                factors={"red|blue": color, optional[2:]: artist}, meta={"stage": "main"})
            for color in ("red", "blue") for artist in (", by greg rutkowski", "") for seed in (1, 2, 3)]
    run = tmp_path / "run"
    with Ledger.open(run) as led:
        finish(led, jobs)
        led.put_scores([Score(j.key, METRIC, 20.0 + j.seed + (j.factors["red|blue"] == "red")) for j in jobs])
    assert cli("report", str(run), "--no-html").returncode == 0
    rows = pd.read_csv(run / "tables" / "comparisons.csv", keep_default_na=False)
    pair_on = rows.loc[rows["factor"] == "f.red|blue", "pair_on"].iloc[0]
    assert optional in pair_on
    out = cli("compare", str(run), "--factor", "red|blue", "--pair-on", pair_on, "--format", "json", "--n-boot", "100")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert optional in result["pair_on"] and ",".join(result["pair_on"]) == pair_on
    assert [r["n_pairs"] for r in result["rows"]] == [6]
