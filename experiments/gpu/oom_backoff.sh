#!/bin/bash
# Usage (on a CUDA machine, from the repository root): bash experiments/gpu/oom_backoff.sh
# Real out-of-memory on the card: another process holds all but ~3 GiB, then a run asks for batches of 64.
python3 - <<'PY' &
import torch, time
free, total = torch.cuda.mem_get_info()
x = torch.empty(int(free - 3 * 2**30), dtype=torch.uint8, device="cuda")
print(f"filler holds {x.numel() / 2**30:.1f} GiB of {total / 2**30:.1f}", flush=True)
time.sleep(170)
PY
sleep 12
nvidia-smi --query-gpu=memory.used,memory.total --format=csv
timeout 140 python3 -m harness run experiments/gpu/oom_backoff.toml --out /tmp/oom --device cuda --batch-size 64 2>&1 | grep -v -i "warn\|it/s" | tail -15
python3 - <<'PY'
import sqlite3, pathlib
db = sqlite3.connect("/tmp/oom/ledger.sqlite")
print("ledger tables", [r[0] for r in db.execute("select name from sqlite_master where type='table'")])
print("pngs", len(list(pathlib.Path("/tmp/oom/images").glob("*.png"))))
PY
kill %1 2>/dev/null
