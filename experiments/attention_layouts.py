"""Attention layouts on XLA:CPU at the roberta-base population shape (issue 18, item 4).

    python experiments/attention_layouts.py [--seqs 640] [--repeats 7]

One self-attention core (scores, mask bias, softmax, weighted values; no projections) of --seqs
sequences (pop 20 x 32 rows = 640; --pop-chunk 4: 128) x 12 heads x 88 tokens x 64, fp32, in the
layouts below, each jitted, median of --repeats; torch bmm / SDPA on the same shapes as the reference.
  einsum-bqhe     what models/roberta.py does: einsum over (B, L, H, E) operands
  heads-batched   q, k, v transposed to (B*H, L, E) first: one batched dot_general with one batch dim
  dpa-xla         jax.nn.dot_product_attention(implementation="xla")
  scores-one-dot  heads folded into the contraction's free dims: (B, H*L, E) block-diagonal masked
                  (a single larger dot per sequence; H x the FLOPs, to see whether size beats waste)
All layouts are checked against einsum-bqhe (max abs difference printed). XLA flags as the CLI sets
them unless BBT_JAX_XLA_DEFAULTS=0; the CPU model is printed.
"""

from __future__ import annotations

import argparse
import time

from bbt_jax.xla_flags import apply_cpu_defaults

apply_cpu_defaults()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

H, L, E = 12, 88, 64


def einsum_bqhe(q, k, v, bias):
    s = jnp.einsum("bqhe,bkhe->bhqk", q, k) / np.float32(np.sqrt(E)) + bias
    return jnp.einsum("bhqk,bkhe->bqhe", jax.nn.softmax(s, -1), v)


def heads_batched(q, k, v, bias):
    B = q.shape[0]
    t = lambda x: x.transpose(0, 2, 1, 3).reshape(B * H, L, E)  # noqa: E731
    s = jnp.matmul(t(q), t(k).transpose(0, 2, 1)) / np.float32(np.sqrt(E))
    s = s.reshape(B, H, L, L) + bias
    o = jnp.matmul(jax.nn.softmax(s, -1).reshape(B * H, L, L), t(v))
    return o.reshape(B, H, L, E).transpose(0, 2, 1, 3)


def dpa_xla(q, k, v, bias):
    return jax.nn.dot_product_attention(q, k, v, bias=bias, implementation="xla")


def scores_one_dot(q, k, v, bias):
    B = q.shape[0]
    qf, kf = q.transpose(0, 2, 1, 3).reshape(B, H * L, E), k.transpose(0, 2, 1, 3).reshape(B, H * L, E)
    s = jnp.matmul(qf, kf.transpose(0, 2, 1)).reshape(B, H, L, H, L) / np.float32(np.sqrt(E))
    s = jnp.diagonal(s, axis1=1, axis2=3).transpose(0, 3, 1, 2) + bias  # B, H, L, L: the same-head blocks
    return jnp.einsum("bhqk,bkhe->bqhe", jax.nn.softmax(s, -1), v)


def median_s(fn, *args, repeats: int) -> float:
    out = jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t)
    del out
    return float(np.median(ts))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seqs", type=int, nargs="+", default=[640, 128])
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    import os

    import torch

    from bbt_jax.provenance import cpu_model

    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; torch threads "
          f"{torch.get_num_threads()}")
    for B in args.seqs:
        keys = jax.random.split(jax.random.PRNGKey(0), 3)
        q, k, v = (jax.random.normal(kk, (B, L, H, E), jnp.float32) for kk in keys)
        mask = (jnp.arange(L)[None, :] < jnp.asarray(np.random.default_rng(0).integers(L // 2, L + 1, B))[:, None])
        bias = jnp.where(mask, 0.0, -1e9).astype(jnp.float32)[:, None, None, :]
        flops = 2 * 2 * B * H * L * L * E  # scores + weighted values
        ref = jax.jit(einsum_bqhe)(q, k, v, bias)
        print(f"\n{B} sequences x {H} heads x {L} tokens x {E}: {flops / 1e9:.2f} GFLOP per call")
        for name, fn in (("einsum-bqhe", einsum_bqhe), ("heads-batched", heads_batched), ("dpa-xla", dpa_xla),
                         ("scores-one-dot", scores_one_dot)):
            f = jax.jit(fn)
            diff = float(jnp.max(jnp.abs(f(q, k, v, bias) - ref)))
            s = median_s(f, q, k, v, bias, repeats=args.repeats)
            print(f"  {name:15s} {1e3 * s:8.1f} ms  {flops / s / 1e9:6.1f} GFLOP/s (useful)  max |diff| {diff:.1e}",
                  flush=True)
        qt, kt, vt = (torch.from_numpy(np.array(x)).permute(0, 2, 1, 3).contiguous() for x in (q, k, v))
        bt = torch.from_numpy(np.array(bias))
        sdpa = torch.nn.functional.scaled_dot_product_attention
        s = _torch_median(lambda: sdpa(qt, kt, vt, attn_mask=bt), args.repeats)
        print(f"  {'torch SDPA':15s} {1e3 * s:8.1f} ms  {flops / s / 1e9:6.1f} GFLOP/s")

        def bmm_path():
            a = torch.bmm(qt.reshape(B * H, L, E), kt.reshape(B * H, L, E).transpose(1, 2)) / np.sqrt(E)
            a = torch.softmax(a.reshape(B, H, L, L) + bt, -1)
            return torch.bmm(a.reshape(B * H, L, L), vt.reshape(B * H, L, E))

        s = _torch_median(bmm_path, args.repeats)
        print(f"  {'torch bmm':15s} {1e3 * s:8.1f} ms  {flops / s / 1e9:6.1f} GFLOP/s")


def _torch_median(fn, repeats: int) -> float:
    import torch

    with torch.no_grad():
        fn()
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
    return float(np.median(ts))


if __name__ == "__main__":
    main()
