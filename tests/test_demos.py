"""demos.py: demonstrations from the training rows in the decoder template (BBT-RGB's In2)."""

import jax
import numpy as np
import pytest

from bbt_jax import config as config_lib
from bbt_jax import demos
from bbt_jax.data import Example
from bbt_jax.errors import UserError
from bbt_jax.tasks import TASKS, with_template
from tests.conftest import ROBERTA_TOKENIZER

SST2 = TASKS["sst2"]


def _rows(n_per_class=4):
    return [Example(f"row {c}{i}", None, c) for i in range(n_per_class) for c in (0, 1)]


def test_k_rows_per_class_leave_the_training_split_and_open_the_template():
    train = _rows()
    task, left = demos.with_demos(SST2, train, 1, seed=13)
    chosen = [r for r in train if r not in left]
    assert len(left) == 6 and sorted(r.label for r in chosen) == [0, 1]
    neg, pos = sorted(chosen, key=lambda r: r.label)
    assert task.decoder_input == (f"Review: {neg.text}\nSentiment: negative\n\n"  # by hand, class order
                                  f"Review: {pos.text}\nSentiment: positive\n\nReview: {{text}}")
    assert task.decoder_cue == SST2.decoder_cue and task.decoder_words == SST2.decoder_words
    again, _ = demos.with_demos(SST2, train, 1, seed=13)
    assert again == task  # the split's seed fixes them
    others = {demos.with_demos(SST2, train, 1, seed=s)[0].decoder_input for s in range(20)}
    assert len(others) > 1  # other seeds, other rows


def test_an_instruction_goes_where_the_template_marks_the_demos():
    task = with_template(SST2, template="Classify the reviews.\n\n{demos}Review: {text}")
    out, _ = demos.with_demos(task, _rows(), 2, seed=0)
    assert out.decoder_input.startswith("Classify the reviews.\n\nReview: row ")
    assert out.decoder_input.count("\nSentiment: negative\n\n") == 2 and out.decoder_input.endswith("Review: {text}")
    with pytest.raises(UserError, match="--demos is 0"):
        demos.with_demos(task, _rows(), 0, seed=0)


def test_pair_tasks_write_both_sentences_and_rows_holding_a_field_are_never_picked():
    rte = TASKS["rte"]
    rows = [Example("a {text} b", "h", 0), Example("p0", "h0", 0), Example("p1", "h1", 1), Example("q1", "g1", 1),
            Example("q0", "g0", 0)]
    for seed in range(10):
        task, left = demos.with_demos(rte, rows, 1, seed=seed)
        assert rows[0] in left and "{text}" in task.decoder_input
        assert task.decoder_input.count("Premise: ") == 3 and task.decoder_input.count("Hypothesis: ") == 3
    with pytest.raises(UserError, match="--demos 2: class 0 has 2 usable training rows"):
        demos.with_demos(rte, rows, 2, seed=0)


def test_a_run_with_demos_scores_rows_that_carry_them(data_dir, roberta_tokenizer):
    from bbt_jax.harness import build
    from bbt_jax.models import llama
    from bbt_jax.models.family import LoadedModel

    cfg = llama.LlamaConfig(vocab_size=50265, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2)
    model = LoadedModel(llama.FAMILY, cfg, llama.init_params(cfg, jax.random.PRNGKey(1)),
                        llama.make_vocab(roberta_tokenizer, cfg), "test:tiny-llama")
    base = config_lib.override(config_lib.tiny(), data_dir=str(data_dir), placement="cue", test_rows=4,
                               max_length=256)
    plain = build(base, model=model, log=lambda s: None)
    h = build(config_lib.override(base, demos=1), model=model, log=lambda s: None)
    assert len(h.encoded["train"]) == len(plain.encoded["train"]) - 2
    assert len(h.encoded["dev"]) == len(plain.encoded["dev"]) and h.task.decoder_input.endswith("Review: {text}")
    demo_text = h.task.decoder_input[:-len("Review: {text}")]
    for split in ("dev", "test"):  # the same rows, each after the same demonstrations
        for a, b in zip(h.encoded[split], plain.encoded[split], strict=True):
            n = len(a.ids) - len(b.ids)
            assert n > 0 and a.ids[n:] == b.ids and a.answer_pos == b.answer_pos + n
            assert roberta_tokenizer.decode(a.ids[:n]) == demo_text  # the demonstrations, then the row as before
    with pytest.raises(UserError, match="--demos 1: decoder LMs only"):
        build(config_lib.override(config_lib.tiny(), data_dir=str(data_dir), demos=1),
              default_tokenizer=ROBERTA_TOKENIZER, log=lambda s: None)


def test_a_seed_group_with_each_seed_s_own_demos_equals_its_solo_runs(tmp_path, data_dir, roberta_tokenizer):
    """Each seed's demonstrations are its own (other rows, other test rows); the vmapped group still equals
    each cell run alone, test included."""
    from bbt_jax import train as train_lib
    from bbt_jax.models import llama
    from bbt_jax.models.family import LoadedModel
    from bbt_jax.sweep import train_group

    cfg = llama.LlamaConfig(vocab_size=50265, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2)
    params = jax.tree.map(lambda x: 10 * x, llama.init_params(cfg, jax.random.PRNGKey(1)))

    def model():
        return LoadedModel(llama.FAMILY, cfg, params, llama.make_vocab(roberta_tokenizer, cfg), "test:tiny-llama")

    base = config_lib.override(config_lib.tiny(), data_dir=str(data_dir), placement="cue", budget=8, eval_every=4,
                               test_rows=16, num_buckets=1, eval_buckets=1, demos=1, max_length=256)
    cells = [config_lib.override(base, seed=s, out=str(tmp_path / "group" / str(s))) for s in (13, 21)]
    group = train_group(cells, model=model(), zero_shot=True, log=lambda s: None)
    assert group is not None and group[0]["template"] != group[1]["template"]
    for c, g in zip(cells, group, strict=True):
        alone = train_lib.train(config_lib.override(c, out=str(tmp_path / "alone" / str(c.run.seed))),
                                model=model(), zero_shot=True, log=lambda s: None)
        np.testing.assert_allclose([r["best_loss"] for r in g["curve"]], [r["best_loss"] for r in alone["curve"]],
                                   rtol=1e-4, atol=1e-6)
        assert g["dev"] == alone["dev"] and g["test"] == alone["test"]
        assert g["zero_shot_test"] == alone["zero_shot_test"] and g["template"] == alone["template"]


def _tiny_llama(roberta_tokenizer, scale=10.0):
    from bbt_jax.models import llama
    from bbt_jax.models.family import LoadedModel

    cfg = llama.LlamaConfig(vocab_size=50265, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2)
    params = jax.tree.map(lambda x: scale * x, llama.init_params(cfg, jax.random.PRNGKey(1)))
    return LoadedModel(llama.FAMILY, cfg, params, llama.make_vocab(roberta_tokenizer, cfg), "test:tiny-llama")


def _loss_at_z0_by_hand(cfg, task, train, model):
    """Cross-entropy at z = 0 of `task` on `train`, built alone at its own shapes (the slow reference)."""
    from bbt_jax.harness import assemble

    one = assemble(cfg, task, {"train": train}, model)
    fit = one.fitness("train")
    logits_BxC = np.asarray(fit.logits(one.projection(one.start)), np.float64)
    logp_BxC = logits_BxC - np.log(np.exp(logits_BxC).sum(-1, keepdims=True))
    w_B, y_B = np.asarray(fit.data.weight_B), np.asarray(fit.data.labels_B)
    return -(w_B * logp_BxC[np.arange(len(y_B)), y_B]).sum() / w_B.sum()


def test_demo_draws_keep_the_draw_with_the_lowest_training_loss_at_z0(data_dir, roberta_tokenizer):
    """The rule against a slow reference: every draw built alone at its own shapes, its loss at z = 0 by hand."""
    from bbt_jax.harness import build, read_splits

    model = _tiny_llama(roberta_tokenizer)
    base = config_lib.override(config_lib.tiny(), data_dir=str(data_dir), placement="cue", test_rows=4,
                               max_length=256, demos=1)
    draws = 6
    h = build(config_lib.override(base, demo_draws=draws), model=model, log=lambda s: None)
    train, seed = read_splits(base, SST2)["train"], base.run.seed_of("split")
    losses = [_loss_at_z0_by_hand(base, *demos.with_demos(SST2, train, 1, seed=seed, draw=i), model)
              for i in range(draws)]
    assert len(set(losses)) > 1  # the draws differ
    kept = int(np.argmin(losses))
    assert h.demo_draw == kept and h.effective()["demo_draw"] == kept
    assert h.task == demos.with_demos(SST2, train, 1, seed=seed, draw=kept)[0]
    assert len(h.encoded["train"]) == len(train) - 2
    plain = build(base, model=model, log=lambda s: None)  # one draw: draw 0, the split seed's, unscored
    assert plain.demo_draw == 0 and plain.task == demos.with_demos(SST2, train, 1, seed=seed)[0]
    with pytest.raises(UserError, match="--demo-draws 3: draws sets of --demos, which is 0"):
        config_lib.override(config_lib.tiny(), demo_draws=3)


@pytest.mark.parametrize(("scale", "none_wins"), [(10.0, True), (3.0, False)])  # both outcomes, by hand
def test_demo_none_weighs_the_template_without_demonstrations_against_the_draws(data_dir, roberta_tokenizer, scale,
                                                                                none_wins):
    """--demo-none keeps whichever of {no demonstrations on every training row, each draw on the rows it leaves}
    has the lowest loss at z = 0 by hand; kept, the template loses its {demos} mark and keeps every row."""
    from bbt_jax.harness import build, read_splits

    model = _tiny_llama(roberta_tokenizer, scale)
    task = with_template(SST2, template="Classify.\n\n{demos}Review: {text}")
    base = config_lib.override(config_lib.tiny(), data_dir=str(data_dir), placement="cue", test_rows=4,
                               max_length=256, demos=1, demo_draws=3, template=task.decoder_input)
    train, seed = read_splits(base, task)["train"], base.run.seed_of("split")
    plain = _loss_at_z0_by_hand(base, demos.without_demos(task), train, model)
    drawn = [_loss_at_z0_by_hand(base, *demos.with_demos(task, train, 1, seed=seed, draw=i), model) for i in range(3)]
    h = build(config_lib.override(base, demo_none=True), model=model, log=lambda s: None)
    assert (plain < min(drawn)) == none_wins
    if none_wins:
        assert h.demo_draw == -1 and h.effective()["demo_draw"] == -1
        assert h.task.decoder_input == "Classify.\n\nReview: {text}" and len(h.encoded["train"]) == len(train)
    else:
        kept = int(np.argmin(drawn))
        assert h.demo_draw == kept and h.task == demos.with_demos(task, train, 1, seed=seed, draw=kept)[0]
        assert len(h.encoded["train"]) == len(train) - 2
    with pytest.raises(UserError, match="--demo-none: weighs the template against --demos, which is 0"):
        config_lib.override(config_lib.tiny(), demo_none=True)

