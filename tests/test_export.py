"""`bbt-jax export` (bbt_jax/export.py): a decoder prompt in placement prefix as a PEFT prompt-tuning
adapter gives the same verbalizer logits in `peft.PeftModel` as in our model; every other layout is a
one-line error."""

import dataclasses
import json
import shutil

import numpy as np
import pytest

from bbt_jax import artifact, cli
from bbt_jax import config as config_lib
from bbt_jax.fitness import make_fitness

peft = pytest.importorskip("peft")
torch = pytest.importorskip("torch")
N, D = 4, 16
TOL = 1e-4


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny random LlamaForCausalLM saved as a checkpoint folder, with the RoBERTa tokenizer (ids < V)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = cli.shared_path("models/roberta-tokenizer/tokenizer.json")
    if not tok.is_file():
        pytest.skip("../shared/models/roberta-tokenizer is missing")
    torch.manual_seed(0)
    t = LlamaForCausalLM(LlamaConfig(vocab_size=50265, hidden_size=D, intermediate_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                     tie_word_embeddings=True, initializer_range=0.3)).eval()  # logits O(1)
    path = tmp_path_factory.mktemp("llama")
    t.save_pretrained(path)
    shutil.copy(tok, path / "tokenizer.json")
    return path


def _saved(ckpt, data_dir, out, **flags):
    """A harness on the checkpoint and a random prompt saved from it (prompt-tuning: the candidate is the prompt)."""
    from bbt_jax.harness import build

    cfg = config_lib.override(config_lib.tiny(), model=str(ckpt), data_dir=str(data_dir), test_rows=8,
                              method="prompt-tuning", max_length=48, **flags)
    h = build(cfg, log=lambda s: None)
    prompt = 0.5 * np.random.default_rng(1).normal(size=h.layout.p0.shape).astype(np.float32)
    out.mkdir()
    artifact.save_prompt(out, h, prompt, {})
    return h, artifact.load_prompt(out)


@pytest.mark.parametrize("splice", ["replace", "add"])
def test_peft_reproduces_prefix_logits(ckpt, data_dir, tmp_path, splice, capsys):
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    h, saved = _saved(ckpt, data_dir, tmp_path / "run", placement="prefix", decoder_splice=splice)
    batch = h.test_batches[0]
    assert (np.asarray(batch.prompt_start_B) == 0).all()
    ours = np.asarray(make_fitness(h.backbone, h.frozen, (batch,)).logits(saved.prompt))
    assert cli.main(["export", "--prompt", str(tmp_path / "run"), "--peft", str(tmp_path / "peft")]) == 0
    assert "wrote" in capsys.readouterr().out
    cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "PROMPT_TUNING" and cfg["num_virtual_tokens"] == N and cfg["token_dim"] == D
    assert cfg["base_model_name_or_path"] == str(ckpt) and cfg["num_layers"] == 2

    model = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(ckpt).eval(), tmp_path / "peft")
    ids, mask = np.asarray(batch.input_ids_BxL)[:, N:], np.asarray(batch.attention_mask_BxL)[:, N:]
    with torch.no_grad():  # the rows without the slots: PEFT prepends the N virtual tokens itself
        logits = model(input_ids=torch.as_tensor(ids, dtype=torch.long),
                       attention_mask=torch.as_tensor(mask, dtype=torch.long)).logits.numpy()
    assert logits.shape[1] == N + ids.shape[1]  # so our answer position (counting the slots) indexes it unchanged
    real = np.asarray(batch.weight_B) > 0
    theirs = logits[np.arange(len(ids)), np.asarray(batch.answer_pos_B)][:, np.asarray(h.verbalizer_C)]
    assert np.abs(theirs[real] - ours[real]).max() <= TOL
    assert ours[real].std() > 0.1  # the weights are large enough for a wrong layout to show

@pytest.mark.parametrize("placement", ["suffix", "cue"])
def test_prompt_after_the_input_is_not_exported(ckpt, data_dir, tmp_path, placement, capsys):
    _saved(ckpt, data_dir, tmp_path / "run", placement=placement)
    assert cli.main(["export", "--prompt", str(tmp_path / "run"), "--peft", str(tmp_path / "peft")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"placement '{placement}' puts the prompt after the input" in err[0]
    assert "(exportable: prefix)" in err[0] and not (tmp_path / "peft").exists()


def test_deep_and_masked_prompts_are_not_exported(ckpt, data_dir, tmp_path, capsys):
    from bbt_jax import export

    _, saved = _saved(ckpt, data_dir, tmp_path / "run", placement="prefix")
    deep = dataclasses.replace(saved, layers_YxNxD=np.zeros((2, N, D), np.float32))
    with pytest.raises(cli.UserError, match="deep prompt .* PEFT prompt tuning holds input vectors only"):
        export.check_exportable(deep)
    masked = dataclasses.replace(saved, card={**saved.card, "family": "roberta", "placement": "cat"})
    with pytest.raises(cli.UserError, match="placement 'cat' on a masked LM .* no masked-LM placement exports"):
        export.check_exportable(masked)
    assert cli.main(["export", "--prompt", str(tmp_path / "nope"), "--peft", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --prompt")
