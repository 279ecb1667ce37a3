"""Compiled scratch memory of the decoder's cached scorer for a seed group (no weights, no data: shapes only).

SmolLM2-135M's shape, dbpedia-like rows (224 train rows of 128 tokens per cell, a 3-token cue plus 2 more
suffix tokens, 14 classes), a population of 20 scored in chunks per cell, vmapped over S cells as sweep.py
does: prints XLA's temp (scratch) and argument sizes of the compiled call (`memory_analysis()`).

  python experiments/group_memory.py 1 0   # one cell, the whole population in one vmap
  python experiments/group_memory.py 3 6   # 3 cells, chunks of 6 members (sweep.group_plan for dbpedia)

Session 10, AMD EPYC, jax 0.10.2: S=3 chunk 6: temp 7.81 GiB with the cache scanned over layers (commit
f1d13b5), 0.43 GiB with it indexed per layer (5064cfd); args 4.09 GiB (the 3 cells' caches).
"""

import sys

import jax
import jax.numpy as jnp

from bbt_jax.models import llama


def main(cells: int, chunk: int) -> None:
    cfg = llama.LlamaConfig(vocab_size=1000, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                            num_attention_heads=9, num_key_value_heads=3, rope_theta=10000.0)
    params = jax.eval_shape(lambda: llama.init_params(cfg, jax.random.PRNGKey(0)))
    P, B, L, R, C = 20, 224, 128, 5, 14
    Y, Q, E = cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim
    kv = jax.ShapeDtypeStruct((cells, Y, B, L, Q, E), jnp.float32)
    cache = llama.InputCache(kv, kv, jax.ShapeDtypeStruct((cells, B, L), jnp.int32))
    ids, start = jax.ShapeDtypeStruct((cells, B, R), jnp.int32), jax.ShapeDtypeStruct((cells, B), jnp.int32)
    suffix = llama.Suffix(ids, start, 3)
    prompts = jax.ShapeDtypeStruct((cells, P, 3, cfg.hidden_size), jnp.float32)

    def one_cell(params, cache, suffix, prompts_PxNxD):
        def member(p):
            return llama.label_logits_cached(cfg, params, cache, suffix, jnp.arange(C), p)

        return jax.lax.map(member, prompts_PxNxD, batch_size=chunk) if chunk else jax.vmap(member)(prompts_PxNxD)

    m = jax.jit(jax.vmap(one_cell, in_axes=(None, 0, 0, 0))).lower(params, cache, suffix, prompts).compile()
    m = m.memory_analysis()
    print(f"cells {cells}, chunk {chunk}: temp {m.temp_size_in_bytes / 2**30:.2f} GiB, "
          f"args {m.argument_size_in_bytes / 2**30:.2f} GiB ({jax.devices()[0].device_kind})")


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
