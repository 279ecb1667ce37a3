"""Counted FLOPs of a paper-budget BBT run (roberta-large, sst2 16-shot seed 13, N=50, d=500,
pop 20, 8000 calls) and the time they imply on an H100 — a PROJECTION, not a measurement.

Usage: python -m tools.bench.paper_flops [--utilisation U]   (U: measured by `python -m tools.bench`)
"""

import argparse
import json

from tokenizers import Tokenizer

from bbt_jax import tasks as T
from bbt_jax.data import read_jsonl, split_paths
from bbt_jax.io import shared_path
from bbt_jax.models import roberta
from tools.bench import flops as F

H100_BF16_DENSE_TFLOPS = 989.0  # H100 SXM, dense bf16 tensor-core peak (NVIDIA datasheet; 1979 is with sparsity)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--utilisation", type=float, default=None, help="fraction of peak to assume (e.g. from the bench)")
    args = p.parse_args()
    cfg = roberta.preset("roberta-large")
    vocab = roberta.make_vocab(Tokenizer.from_file(str(shared_path("models/roberta-tokenizer/tokenizer.json"))))
    task = T.TASKS["sst2"]
    paths = split_paths(shared_path("data"), "sst2", 16, 13)
    tpl = T.template_for(task, vocab, "add")
    calls, pop = 8000, 20
    out = {}
    for split in ("train", "dev"):
        rows = [T.encode_example(e, task, vocab, tpl, 50, 512) for e in read_jsonl(paths[split], 2, pair=False)]
        real = sum(F.roberta_config_flops(cfg, 1, len(r.ids)) for r in rows)
        buckets = T.make_buckets(rows, vocab.pad_id, num_buckets=4)
        padded = sum(F.roberta_config_flops(cfg, b.input_ids_BxL.shape[0], b.input_ids_BxL.shape[1]) for b in buckets)
        out[split] = {"rows": len(rows), "flops_per_call_real": real, "flops_per_call_4_buckets": padded}
    train, dev = out["train"], out["dev"]
    dev_evals = calls // 100
    total = calls * train["flops_per_call_4_buckets"] + dev_evals * dev["flops_per_call_4_buckets"]
    out["total_flops_4_buckets"] = total
    out["h100_seconds_at_peak"] = total / (H100_BF16_DENSE_TFLOPS * 1e12)
    if args.utilisation:
        out["utilisation_assumed"] = args.utilisation
        out["h100_seconds_at_utilisation"] = out["h100_seconds_at_peak"] / args.utilisation
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
