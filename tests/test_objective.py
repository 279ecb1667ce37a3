"""Losses and metrics against hand-computed values and bbt.py's torch formulas."""

import numpy as np
import pytest
import torch

from bbt_jax import objective as O

LOGITS = np.array([[2.0, 0.5], [0.1, 0.3], [1.0, 1.0], [-1.0, 3.0]], np.float32)
LABELS = np.array([0, 0, 1, 1], np.int32)
W = np.ones(4, np.float32)


def bbt_hinge(logit, target, margin):
    """utils.hinge_loss (Black-Box-Tuning), reduction='sum', re-stated in torch."""
    target = target.unsqueeze(1)
    tgt = torch.gather(logit, 1, target)
    loss = (logit - tgt + margin).clamp(min=0)
    loss = torch.scatter(loss, 1, target, 0.0)
    return loss.sum()


def test_ce_matches_torch():
    ref = torch.nn.functional.cross_entropy(torch.tensor(LOGITS), torch.tensor(LABELS).long()).item()
    assert abs(float(O.ce_loss(LOGITS, LABELS, W)) - ref) < 1e-6


def test_ce_matches_optax():
    import optax

    ref = np.mean(np.asarray(optax.losses.softmax_cross_entropy_with_integer_labels(LOGITS, LABELS)))
    assert abs(float(O.ce_loss(LOGITS, LABELS, W)) - ref) < 1e-6


def test_hinge_matches_bbt_sum_over_batch():
    ref = bbt_hinge(torch.tensor(LOGITS), torch.tensor(LABELS).long(), 2.0).item() / 4
    assert abs(float(O.hinge_loss(LOGITS, LABELS, W)) - ref) < 1e-6
    # by hand: rows give max(0, .5-2+2)=.5, .3-.1+2=2.2, 1-1+2=2, -1-3+2=0 -> 4.7 / 4
    assert abs(float(O.hinge_loss(LOGITS, LABELS, W)) - 4.7 / 4) < 1e-6


def test_accuracy_and_f1_by_hand():
    # predictions 0, 1, 0 (tie -> first), 1 ; labels 0, 0, 1, 1
    assert float(O.accuracy(LOGITS, LABELS, W)) == 0.5
    # tp=1 fp=1 fn=1 -> f1 = 2/(2+1+1) = 0.5
    assert abs(float(O.f1_binary(LOGITS, LABELS, W)) - 0.5) < 1e-7


def test_weights_drop_padding_rows():
    w = np.array([1, 1, 0, 0], np.float32)
    assert abs(float(O.ce_loss(LOGITS, LABELS, w)) - float(O.ce_loss(LOGITS[:2], LABELS[:2], W[:2]))) < 1e-6
    assert float(O.accuracy(LOGITS, LABELS, w)) == 0.5


@pytest.mark.parametrize("loss", O.LOSSES)
def test_loss_and_metrics(loss):
    value, m = O.loss_and_metrics(loss, "f1", LOGITS, LABELS, W)
    assert set(m) == {"acc", "perf", "f1"}
    if loss == "perf":
        assert float(value) == -float(m["f1"])
    with pytest.raises(ValueError):
        O.loss_and_metrics("mse", "acc", LOGITS, LABELS, W)
