"""The bench's --quick mode runs end to end and writes the documented schema (no timing is asserted);
counted FLOPs agree with XLA's own count of the same computation."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bbt_jax import flops as F
from bbt_jax.models import roberta
from bbt_jax.types import TokenBatch


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
    from bbt_jax import cli

    out = tmp_path / "bench.json"
    assert cli.main(["bench", "--quick", "--json", str(out)]) == 0
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
    default_flags = [r for r in res["rows"] if "default CPU flags" in r["name"]][0]
    assert "ynn" not in default_flags["extra"]["xla_flags"]  # the child really ran without our defaults


def test_bench_bad_flag_is_one_line_error(tmp_path, capsys):
    from bbt_jax import cli

    assert cli.main(["bench", "--quick", "--ref-candidates", "0", "--json", str(tmp_path / "b.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --ref-candidates 0: must be >= 1"
    assert not (tmp_path / "b.json").exists()
