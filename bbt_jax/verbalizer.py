"""Several label words per class (BBT-RGB's "M2"), chosen on the training rows only.

A verbalizer is ids_C (one word per class, the task's) or ids_CxW (W words per class): the class
score is then the MEAN of its W words' logits (models.family.Backbone.score). `choose_words` picks
the W words of each class from the frozen model's next-token / <mask> distribution at the run's
starting prompt (z = 0, p0) on the TRAINING rows (dev and test are never read):

  score_c(v) = mean over class-c rows of log p(v | row) - mean over all rows of log p(v | row)

(how much more likely word v is on class c than on average), among class c's POOL: the `POOL` words
the model finds most likely on class c's rows (mean log p(v | row) over them), LM-BFF's pruning (Gao et
al. 2021). Without the pool the ratio favours rare tokens whose tiny probabilities swing between the 16
rows of a class (" nullable", " calligraphy", " IndexError" on sst2: test at chance, session 11). The
task's own word is each class's first word; the others are the W - 1 best-scoring pool words not taken by
another class, in class order. Candidates are vocabulary tokens that decode to a word of letters only
(2+ letters), spaced like the task's own words (a leading space, or none as bbt.py's masked-LM words),
never special tokens.

Shape letters (bbt_jax/types.py): B rows, V vocabulary, C classes, W words per class.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bbt_jax.errors import UserError


def word_texts(tokenizer, ids) -> list:
    """The decoded words of ids_C or ids_CxW (nested lists for CxW), as results.json and cards show them."""
    ids = np.asarray(ids)
    if ids.ndim == 1:
        return [tokenizer.decode([int(i)]) for i in ids]
    return [[tokenizer.decode([int(i)]) for i in row] for row in ids]


def candidate_mask(tokenizer, vocab_size: int, spaced: bool) -> np.ndarray:
    """mask_V: tokens that decode to one word of 2+ letters, with a leading space iff `spaced`."""
    mask = np.zeros(vocab_size, bool)
    for i in range(vocab_size):
        text = tokenizer.decode([i])
        word = text[1:] if spaced and text.startswith(" ") else (None if spaced else text)
        mask[i] = bool(word) and len(word) >= 2 and word.isalpha() and word.isascii()
    return mask


POOL = 50  # words per class ranked by the contrast: the class's most likely words (module docstring)


def class_logp(logp_BxV: np.ndarray, labels_B: np.ndarray, num_classes: int) -> np.ndarray:
    """logp_CxV: mean log-prob of every word on each class's rows."""
    return np.stack([logp_BxV[labels_B == c].mean(axis=0) for c in range(num_classes)])


def pools(logp_CxV: np.ndarray, mask_V: np.ndarray, size: int = POOL) -> np.ndarray:
    """pool_CxV: each class's `size` most likely candidates (ties: the lower id)."""
    order_CxV = np.argsort(-np.where(mask_V[None, :], logp_CxV, -np.inf), axis=1, kind="stable")[:, :size]
    pool_CxV = np.zeros(logp_CxV.shape, bool)
    np.put_along_axis(pool_CxV, order_CxV, True, axis=1)
    return pool_CxV & mask_V[None, :]


def pick(score_CxV: np.ndarray, own_C: np.ndarray, mask: np.ndarray, words: int) -> np.ndarray:
    """ids_CxW: each class's own word, then its best-scoring candidates (`mask`: V, or C x V per class) not
    taken by another class."""
    C = score_CxV.shape[0]
    mask_CxV = np.broadcast_to(mask, score_CxV.shape)
    taken = set(int(i) for i in own_C)
    out = [[int(own_C[c])] for c in range(C)]
    order_CxV = np.argsort(-np.where(mask_CxV, score_CxV, -np.inf), axis=1, kind="stable")
    for c in range(C):
        for v in order_CxV[c]:
            if len(out[c]) == words:
                break
            if mask_CxV[c, v] and int(v) not in taken:
                out[c].append(int(v))
                taken.add(int(v))
        if len(out[c]) < words:
            raise UserError(f"--words-per-class {words}: only {len(out[c])} candidate words for class {c}")
    return np.asarray(out, np.int32)


def choose_words(h, words: int) -> np.ndarray:
    """ids_CxW chosen on the harness's training rows at its starting prompt (see the module docstring)."""
    vocab_size = int(h.backbone.word_embeddings(h.model.params).shape[0])
    frozen = {**h.frozen, "verbalizer": jnp.arange(vocab_size, dtype=jnp.int32)}
    prompt = h.projection(h.start)
    logp, labels = [], []
    for b in h.buckets("train"):
        logits_BxV = _full_logits(h.backbone, frozen, b, prompt)
        real = np.asarray(b.weight_B) > 0
        logp.append(np.asarray(jax.nn.log_softmax(logits_BxV, axis=-1))[real])
        labels.append(np.asarray(b.labels_B)[real])
    own_C = np.asarray(h.verbalizer_C).reshape(-1)
    spaced = h.model.vocab.tokenizer.decode([int(own_C[0])]).startswith(" ")
    mask_V = candidate_mask(h.model.vocab.tokenizer, vocab_size, spaced)
    logp_BxV, labels_B = np.concatenate(logp), np.concatenate(labels)
    logp_CxV = class_logp(logp_BxV, labels_B, len(own_C))
    return pick(logp_CxV - logp_BxV.mean(axis=0), own_C, pools(logp_CxV, mask_V), words)


# the whole vocabulary's logits at the answer position of one batch (verbalizer = arange(V))
_full_logits = jax.jit(
    lambda backbone, frozen, batch, prompt: backbone.score(frozen, backbone.prepare(frozen, (batch,)), prompt),
    static_argnums=0)
