"""The bench's --quick mode runs end to end and writes the documented schema (no timing is asserted);
counted FLOPs agree with XLA's own count of the same computation."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bbt_jax import xla_flags
from bbt_jax.models import roberta
from bbt_jax.types import TokenBatch
from tools.bench import flops as F


def test_encoder_flops_match_xla_cost_analysis():
    # one layer: XLA counts a while-loop (lax.scan) body once, whatever the trip count
    cfg = roberta.RobertaConfig(vocab_size=300, hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                                intermediate_size=128, max_position_embeddings=64)
    params = roberta.init_params(cfg, jax.random.PRNGKey(0))
    B, L, N = 4, 32, 4
    batch = TokenBatch(jnp.full((B, L), 7, jnp.int32), jnp.ones((B, L), jnp.int32), jnp.ones(B, jnp.int32),
                       jnp.full(B, L - 2, jnp.int32), jnp.zeros(B, jnp.int32), jnp.ones(B))
    fn = jax.jit(lambda p, pr: roberta.label_logits(cfg, p, batch, jnp.asarray([5, 9]), pr))
    xla = fn.lower(params, jnp.zeros((N, 64))).compile().cost_analysis()
    xla = xla[0] if isinstance(xla, list) else xla
    ours = F.roberta_config_flops(cfg, B, L, head="verbalizer")
    # XLA also counts elementwise ops (softmax, gelu, LayerNorm); matmuls dominate
    assert 0.85 * xla["flops"] <= ours <= 1.02 * xla["flops"], (ours, xla["flops"])


@pytest.mark.slow
def test_bench_quick_writes_schema(tmp_path, data_dir):
    from tools.bench.__main__ import main

    out = tmp_path / "bench.json"
    assert main(["--quick", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert {"device", "jax", "xla_flags", "matmul_gflops", "rows"} <= set(res)
    assert res["matmul_gflops"] > 0
    keys = {"name", "model", "pop", "batch", "tokens_real", "tokens_padded", "seconds_per_generation",
            "gflops_achieved", "utilisation", "vs_bbt_reference", "vs_stock_reference", "vs_uncached",
            "tokens_real_per_s", "tokens_padded_per_s"}
    for row in res["rows"]:
        assert keys <= set(row)
        assert row["seconds_per_generation"] > 0 and row["tokens_real"] <= row["tokens_padded"]
    names = [r["name"] for r in res["rows"]]
    assert any("bbt reference" in n for n in names) and any("stock reference" in n for n in names)
    bf16 = [r for r in res["rows"] if "bf16" in r["name"]][0]
    assert np.isfinite(bf16["extra"]["max_abs_loss_diff_vs_fp32"])
    assert [(p["pop"], p["chunk"]) for p in res["population"]] == [(8, 8), (32, 8), (32, 0)]
    assert all(p["peak_rss_mb"] >= p["rss_before_mb"] > 0 for p in res["population"])
    assert res["sweep"]["S"] == 8 and res["complete"] is True
    # a child with XLA's own CPU flags only where ours differ (xla_flags.CPU_DEFAULTS; none since issue 18)
    assert any("default CPU flags" in n for n in names) == bool(xla_flags.CPU_DEFAULTS)
    # the machine: CPU model and cores
    assert res["cpu"] and res["cpu"] == res["machine"]["cpu"] and res["cores"] >= 1
    # the decoder rows (a tiny Llama in --quick): cached vs uncached, the demo workload, the torch reference
    assert {"SmolLM2 fused, uncached", "SmolLM2 fused, shared input cache",
            "SmolLM2 demo (cue placement, shared input cache)"} <= set(names)
    assert {"SmolLM2 demo, BBTv2 sequential (2 layer prompts)", "SmolLM2 demo, BBTv2 parallel (2 layer prompts)"} \
        <= set(names)
    # ES overhead: the RoBERTa shape, the demo shape (d=500, pop 20 CMA-ES), BBTv2 at the demo shape (2 layers)
    es = res["es_overhead"]
    assert len(es) == 4 and all(r["es_ms"] > 0 and r["generation_ms"] > 0 and r["es_share"] > 0 for r in es)
    assert (es[1]["dim"], es[1]["pop"], es[1]["strategy"]) == (500, 20, "CMA_ES")
    assert [(r["method"], r["dim"]) for r in es[2:]] == [("bbtv2", 1000), ("bbtv2", 1000)]
    assert abs(es[0]["es_share"] - es[0]["es_ms"] / es[0]["generation_ms"]) < 1e-9
    # test-pass cost: sst2 and agnews, eval buckets 0 vs 4, compile and compute apart
    ev = res["eval"]
    assert sorted((r["task"], r["num_buckets"]) for r in ev) == [("agnews", 0), ("agnews", 4), ("sst2", 0), ("sst2", 4)]
    for r in ev:
        assert r["rows"] > 0 and r["compile_s"] >= 0 and r["compute_s_per_1000_rows"] > 0
        assert r["tokens_real"] <= r["tokens_padded"] and r["shapes"] <= r["batches"]
        assert r["shapes"] <= 4 or r["num_buckets"] == 0


def test_bench_bad_flag_is_one_line_error(tmp_path, capsys):
    from tools.bench.__main__ import main

    assert main(["--quick", "--ref-candidates", "0", "--json", str(tmp_path / "b.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --ref-candidates 0: must be >= 1"
    assert not (tmp_path / "b.json").exists()


def test_bench_child_is_a_tools_entry_point():
    """The children the bench spawns are tools/bench entry points, not the user CLI."""
    from tools.bench import bench

    r = bench.run_child(["pop", "--pop", "4", "--chunk", "2", "--quick"])
    assert (r["pop"], r["chunk"]) == (4, 2) and r["seconds"] > 0


def test_library_does_not_import_the_bench():
    import subprocess
    import sys

    code = "import sys, bbt_jax, bbt_jax.cli, bbt_jax.train; print(any(m.startswith(('tools', 'torch')) for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
