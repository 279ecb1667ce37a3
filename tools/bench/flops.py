"""Counted FLOPs of the work a forward pass actually runs (2 FLOPs per multiply-add).

Only matmuls are counted (embeddings lookups, norms, softmax and activations are
a few percent at these shapes and are left out, which makes achieved-GFLOP/s
figures conservative). Counts are per padded batch, i.e. for the work run,
padding included; pass real lengths to count the useful part.

Shape letters: B rows, L length, D hidden, I intermediate, V vocab, C classes,
H query heads, G key/value heads, E head dim, S suffix tokens, T cached tokens.
"""

from __future__ import annotations


def encoder_layer_flops(tokens: int, length: int, d: int, i: int) -> int:
    """One post-LN encoder layer over `tokens` tokens in sequences of `length`."""
    proj = 2 * tokens * (4 * d * d)  # Q, K, V, O
    attn = 2 * tokens * (2 * length * d)  # scores + weighted values
    mlp = 2 * tokens * (2 * d * i)
    return proj + attn + mlp


def roberta_flops(rows: int, length: int, *, d: int, i: int, layers: int, head: str, num_classes: int = 2,
                  vocab: int = 50265) -> int:
    """A RoBERTa MLM pass over a rows x length batch.

    head: "verbalizer" (dense + LN at the answer only, C output rows), "mask_vocab"
    (answer position only, full vocab: bbt.py's model), "stock" (every position, full vocab).
    """
    tokens = rows * length
    body = layers * encoder_layer_flops(tokens, length, d, i)
    if head == "verbalizer":
        return body + 2 * rows * (d * d + d * num_classes)
    if head == "mask_vocab":
        return body + 2 * rows * (d * d + d * vocab)
    if head == "stock":
        return body + 2 * tokens * (d * d + d * vocab)
    raise ValueError(head)


def decoder_layer_flops(tokens: int, context: int, *, d: int, i: int, h: int, g: int, e: int) -> int:
    """One Llama layer for `tokens` new tokens attending to `context` keys each (upper bound: no causal halving)."""
    proj = 2 * tokens * (d * h * e + 2 * d * g * e + h * e * d)  # Q, K, V, O
    attn = 2 * tokens * (2 * context * h * e)
    mlp = 2 * tokens * (3 * d * i)  # gate, up, down
    return proj + attn + mlp


def llama_flops(rows: int, new_tokens: int, context: int, *, d: int, i: int, h: int, g: int, e: int, layers: int,
                num_classes: int = 2) -> int:
    """A decoder pass: `new_tokens` per row attending to `context` keys (cache + new), head at one position."""
    tokens = rows * new_tokens
    body = layers * decoder_layer_flops(tokens, context, d=d, i=i, h=h, g=g, e=e)
    return body + 2 * rows * d * num_classes


def llama_config_flops(cfg, rows: int, new_tokens: int, context: int, num_classes: int = 2) -> int:
    return llama_flops(rows, new_tokens, context, d=cfg.hidden_size, i=cfg.intermediate_size,
                       h=cfg.num_attention_heads, g=cfg.num_key_value_heads, e=cfg.head_dim,
                       layers=cfg.num_hidden_layers, num_classes=num_classes)


def roberta_config_flops(cfg, rows: int, length: int, head: str = "verbalizer", num_classes: int = 2) -> int:
    return roberta_flops(rows, length, d=cfg.hidden_size, i=cfg.intermediate_size, layers=cfg.num_hidden_layers,
                         head=head, num_classes=num_classes, vocab=cfg.vocab_size)
