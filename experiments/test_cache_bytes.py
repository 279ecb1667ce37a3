"""Bytes of the prepared test batches (the decoder's input cache) of 1000 test rows per task, SmolLM2 demo layout.

    python experiments/test_cache_bytes.py dbpedia yelpp

Sets fitness.PREPARED_CACHE_BYTES out of the way, scores the start prompt on each task's first 1000 test rows
and prints the batches, the GiB the loaded model keeps for them and the seconds the pass took.
"""

import sys
import time

import jax.numpy as jnp

from bbt_jax import config as C
from bbt_jax import fitness
from bbt_jax.harness import build
from bbt_jax.io import shared_path
from bbt_jax.models.registry import load

fitness.PREPARED_CACHE_BYTES = 1 << 40
model = load("smollm2", "")
for task in sys.argv[1:]:
    cfg = C.override(C.demo(), task=task, test_rows=1000, data_dir=str(shared_path("data")))
    h = build(cfg, model=model, log=lambda s: None)
    t = time.time()
    h.test_metrics(jnp.asarray(h.layout.p0, jnp.float32)[None])
    tot = sum(fitness.nbytes(d) for d in model.prepared.values())
    print(task, len(h.test_batches), "batches", f"{tot/2**30:.2f} GiB", f"{time.time()-t:.0f} s", flush=True)
    model.prepared.clear()
