"""The ledger as pandas frames: one row per job, one row per score."""

from __future__ import annotations

import json
from dataclasses import fields
from typing import TYPE_CHECKING

from ..core import Job, canonical_json

if TYPE_CHECKING:
    from .store import Ledger


def jobs_frame(ledger: Ledger):
    """One row per job: Job fields, ``f.<factor>``, ``meta.<name>``, run columns, ``h.<health>``."""
    import pandas as pd

    job_fields = [f.name for f in fields(Job) if f.name not in ("factors", "meta")]
    run_cols = ["status", "stage", "parent_key", "added_at", "done_at", "batch_id", "batch_size",
                "slot", "seconds", "device", "dtype_used", "host", "memory", "error"]
    records, fcols, mcols, hcols = [], set(), set(), set()
    for row in ledger._read("SELECT * FROM jobs ORDER BY rowid"):
        d = json.loads(row["job_json"])
        rec = {"key": row["key"], **{name: d.get(name) for name in job_fields}}
        for k, v in d.get("factors", {}).items():
            rec[f"f.{k}"] = v
            fcols.add(f"f.{k}")
        for k, v in d.get("meta", {}).items():
            rec[f"meta.{k}"] = v if v is None or isinstance(v, (str, int, float, bool)) else canonical_json(v)
            mcols.add(f"meta.{k}")
        rec.update({c: row[c] for c in run_cols})
        rec["memory"] = None if row["memory"] is None else ",".join(json.loads(row["memory"]))
        for k, v in (json.loads(row["health"]) if row["health"] else {}).items():
            rec[f"h.{k}"] = v
            hcols.add(f"h.{k}")
        records.append(rec)
    columns = ["key", *job_fields, *sorted(fcols), *sorted(mcols), *run_cols, *sorted(hcols)]
    return pd.DataFrame.from_records(records, columns=columns)

def scores_frame(ledger: Ledger):
    """One row per (key, metric): value (NaN where not scorable), detail (JSON text), scored_at."""
    import pandas as pd

    rows = ledger._read("SELECT key, metric, value, detail, scored_at FROM scores ORDER BY key, metric")
    frame = pd.DataFrame.from_records([tuple(r) for r in rows],
                                      columns=["key", "metric", "value", "detail", "scored_at"])
    frame["value"] = frame["value"].astype(float)
    return frame
