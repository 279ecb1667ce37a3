"""Verbalizer logits -> loss and metrics, as Black-Box-Tuning `bbt.py` calc_metric.

Losses (bbt.py): "ce" mean cross-entropy; "hinge" utils.hinge_loss with margin 2,
summed then divided by the batch size; "perf" the negative metric. Metrics:
accuracy, and binary F1 of class 1 for MRPC (sklearn's f1_score default).
Rows with weight 0 are padding and never count.

Shape letters (bbt_jax/types.py): B batch rows, C classes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

LOSSES = ("ce", "hinge", "perf")
HINGE_MARGIN = 2.0  # metrics.py: self.margin = 2


def accuracy(logits_BxC, labels_B, weight_B):
    correct_B = (jnp.argmax(logits_BxC, -1) == labels_B).astype(jnp.float32)
    return jnp.sum(correct_B * weight_B) / jnp.maximum(jnp.sum(weight_B), 1.0)


def f1_binary(logits_BxC, labels_B, weight_B):
    """F1 of class 1; 0 when there is no true or predicted positive (sklearn's zero_division)."""
    pred_B = jnp.argmax(logits_BxC, -1) == 1
    gold_B = labels_B == 1
    tp = jnp.sum(weight_B * (pred_B & gold_B))
    fp = jnp.sum(weight_B * (pred_B & ~gold_B))
    fn = jnp.sum(weight_B * (~pred_B & gold_B))
    denom = 2 * tp + fp + fn
    return jnp.where(denom > 0, 2 * tp / jnp.maximum(denom, 1e-12), 0.0)


def metric_value(metric: str, logits_BxC, labels_B, weight_B):
    return f1_binary(logits_BxC, labels_B, weight_B) if metric == "f1" else accuracy(
        logits_BxC, labels_B, weight_B)


def ce_loss(logits_BxC, labels_B, weight_B):
    """Weighted mean of -log_softmax[label], as bbt.py. Not optax's softmax CE: its forms (logsumexp - logit,
    or -sum(onehot * log_softmax)) agree to 1 ulp but compile to other float orders inside the fused
    population call, which reorders near-tied candidates and so changes CMA-ES trajectories
    (tests/test_objective.py checks the values against optax)."""
    logp_BxC = jax.nn.log_softmax(logits_BxC.astype(jnp.float32), -1)
    nll_B = -jnp.take_along_axis(logp_BxC, labels_B[:, None], -1)[:, 0]
    return jnp.sum(nll_B * weight_B) / jnp.maximum(jnp.sum(weight_B), 1.0)


def hinge_loss(logits_BxC, labels_B, weight_B, margin: float = HINGE_MARGIN):
    """sum_b sum_{c != y_b} max(0, l_c - l_y + margin) / B (bbt.py utils.hinge_loss)."""
    logits_BxC = logits_BxC.astype(jnp.float32)
    target_B1 = jnp.take_along_axis(logits_BxC, labels_B[:, None], -1)
    viol_BxC = jnp.maximum(logits_BxC - target_B1 + margin, 0.0)
    viol_BxC = jnp.where(jax.nn.one_hot(labels_B, logits_BxC.shape[-1]) > 0, 0.0, viol_BxC)
    return jnp.sum(viol_BxC * weight_B[:, None]) / jnp.maximum(jnp.sum(weight_B), 1.0)


def loss_and_metrics(loss: str, metric: str, logits_BxC, labels_B, weight_B):
    """(loss, {"acc", metric}) for one candidate on one batch."""
    perf = metric_value(metric, logits_BxC, labels_B, weight_B)
    if loss == "ce":
        value = ce_loss(logits_BxC, labels_B, weight_B)
    elif loss == "hinge":
        value = hinge_loss(logits_BxC, labels_B, weight_B)
    elif loss == "perf":
        value = -perf
    else:
        raise ValueError(f"unknown loss {loss!r}; choose from {LOSSES}")
    metrics = {"acc": accuracy(logits_BxC, labels_B, weight_B), "perf": perf}
    if metric == "f1":
        metrics["f1"] = perf
    return value, metrics
