"""Each task's prepared train + dev bytes per cell (sweep.prepared_bytes, shapes only) and the plan the sweep
takes for its 5 seeds at the demo's pop 20 on this backend (sweep.group_plan under GROUP_MEMBER_ROWS and
GROUP_ROWS_BYTES): (cells per call, population chunk; 0 = the whole population). SmolLM2, seed 13's rows.

    python experiments/group_plan_bytes.py sst2 yelpp agnews dbpedia mrpc snli rte
"""

import sys

import jax

from bbt_jax import config as C
from bbt_jax import sweep
from bbt_jax import tasks as tasks_lib
from bbt_jax.harness import build
from bbt_jax.io import shared_path
from bbt_jax.models.registry import load
from bbt_jax.provenance import cpu_model

model = load("smollm2", "")
backend = jax.default_backend()
for task in sys.argv[1:]:
    h = build(C.override(C.demo(), task=task, seed=13, test_rows=8, data_dir=str(shared_path("data"))), model=model,
              log=lambda s: None)
    lengths = {s: tuple(tasks_lib.bucket_lengths(h.buckets(s))) for s in ("train", "dev")}
    cell = sweep.prepared_bytes(h, lengths)
    rows = sum(int(b.input_ids_BxL.shape[0]) for b in h.buckets("train"))
    plan = sweep.group_plan(5, 20, rows, budget=sweep.GROUP_MEMBER_ROWS.get(backend), cell_bytes=cell,
                            bytes_budget=sweep.GROUP_ROWS_BYTES.get(backend))
    print(f"{task}: {cell / 2**30:.2f} GiB per cell ({rows} train rows), 5 seeds at pop 20 -> {plan} "
          f"({backend}, {cpu_model()})", flush=True)
