"""Reading a soft prompt as tokens: nearest vocabulary entries, norms, and the hard-prompt check.

For every prompt position (and every layer of a deep prompt) `read_prompt` lists the k
vocabulary tokens nearest to the vector by cosine similarity and by L2 distance to the
word-embedding matrix, the vector's norm against the distribution of word-embedding norms
(median, 5th / 95th percentile), and the distance from p0. `score_as_hard_prompt` is the
waywardness check (Khashabi et al., NAACL 2022): replace the soft prompt by the embeddings
of its nearest tokens and score that on test.

Two readings of the input prompt:
  raw    the prompt vector itself (the searched A z + p0): always reported; this is the
         reading `hard_prompt_ids` and `score_as_hard_prompt` use.
  input  only where the splice is "add" (RoBERTa "add"; decoders with --decoder-splice add):
         the vector the model is actually fed at the slot, its zero-prompt slot vector plus
         the prompt. The slot vector is taken from the family's own layer-0 input
         (`Backbone.layer_inputs` at a zero prompt), so it is family-agnostic. Its `space`
         says how to read it: "word-embedding" where that slot vector is the placeholder
         token's word embedding (decoders: a token whose embedding is nearest would feed
         nearly the same vector with a zero prompt); "embedding-output" where the family adds
         the prompt after its embedding LayerNorm (RoBERTa, as bbt.py: word + position + type,
         then LayerNorm), so the fed vector lives in another space than the word-embedding
         matrix and its reading there is only indicative (cosine more than L2).
Deep-prompt layers (added to every layer's hidden input) are read against the same
word-embedding matrix, per layer, for the same indicative purpose.

Shape letters: see bbt_jax/types.py (N prompt tokens, D hidden, V vocab, Y layers, K = k here).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bbt_jax.tasks import PLACEHOLDER_OFFSET

# Exact L2 is recomputed for this many extra candidates picked by the fast expansion
# |w|^2 - 2 w.x + |x|^2 (float32 cancellation would blur near-zero distances).
_L2_MARGIN = 16


def nearest(word_VxD, x_NxD, k: int) -> dict[str, np.ndarray]:
    """The k nearest vocabulary rows of each vector: "cos_ids"/"cos" (N x k, most similar first) and
    "l2_ids"/"l2" (N x k, closest first); ties go to the lower id."""
    w = np.asarray(word_VxD, np.float32)
    x = np.asarray(x_NxD, np.float32)
    k = min(k, w.shape[0])
    w_norm_V = np.linalg.norm(w, axis=1)
    x_norm_N = np.linalg.norm(x, axis=1)
    dots_NxV = x @ w.T
    cos_NxV = dots_NxV / np.maximum(x_norm_N[:, None] * w_norm_V[None, :], 1e-12)
    cos_ids = np.argsort(-cos_NxV, axis=1, kind="stable")[:, :k]
    sq_NxV = np.square(w_norm_V)[None, :] - 2 * dots_NxV + np.square(x_norm_N)[:, None]
    m = min(k + _L2_MARGIN, w.shape[0])
    cand_NxM = np.sort(np.argpartition(sq_NxV, m - 1, axis=1)[:, :m], axis=1)
    exact_NxM = np.linalg.norm(w[cand_NxM] - x[:, None, :], axis=-1)
    order = np.argsort(exact_NxM, axis=1, kind="stable")[:, :k]
    return {"cos_ids": cos_ids, "cos": np.take_along_axis(cos_NxV, cos_ids, 1),
            "l2_ids": np.take_along_axis(cand_NxM, order, 1), "l2": np.take_along_axis(exact_NxM, order, 1)}


def hard_prompt_ids(word_VxD, prompt_NxD, *, by: str = "cosine") -> np.ndarray:
    """The nearest token id of each prompt position (int, N), by "cosine" or "l2"."""
    if by not in ("cosine", "l2"):
        raise ValueError(f"by={by!r}: choose cosine or l2")
    r = nearest(word_VxD, prompt_NxD, 1)
    return (r["cos_ids"] if by == "cosine" else r["l2_ids"])[:, 0].astype(np.int64)


def hard_prompt(word_VxD, ids_N, layers_YxNxD=None):
    """The prompt pytree whose input prompt is the embeddings of `ids_N`; per-layer prompts (deep
    methods) are kept as given: they are not token embeddings, and zeroing them would measure
    the layers, not the reading (pass zeros for that)."""
    prompt_NxD = jnp.asarray(np.asarray(word_VxD, np.float32)[np.asarray(ids_N, np.int64)])
    if layers_YxNxD is None:
        return prompt_NxD
    return {"input": prompt_NxD, "layers": jnp.asarray(layers_YxNxD, jnp.float32)}


def score_as_hard_prompt(h, ids_N, layers_YxNxD=None) -> dict:
    """Test metrics (fitness.split_metrics) of the hard reading `ids_N` on the harness `h`: the soft
    input prompt replaced by those tokens' embeddings, the per-layer prompts kept (`hard_prompt`).
    In "add" placements the fed vectors are the slot vectors plus those embeddings, as for the
    soft prompt the reading came from."""
    word_VxD = np.asarray(h.backbone.word_embeddings(h.model.params))
    prompt = hard_prompt(word_VxD, ids_N, layers_YxNxD)
    prompts_P = jax.tree.map(lambda x: x[None], prompt)
    return h.test_metrics(prompts_P)[0]


_slot_inputs = jax.jit(lambda backbone, frozen, batch, zeros: backbone.layer_inputs(frozen, batch, zeros)[0],
                       static_argnums=0)


def slot_vectors(h) -> np.ndarray:
    """N x D: the vectors the model feeds at the prompt slots with a zero prompt (first test row, layer-0
    input), i.e. what an "add" splice adds the prompt to."""
    n, d = h.layout.p0.shape
    batch = h.test_batches[0]
    x_BxLxD = _slot_inputs(h.backbone, h.frozen, batch, jnp.zeros((n, d), jnp.float32))
    start = int(np.asarray(batch.prompt_start_B)[0])
    return np.asarray(jax.device_get(x_BxLxD[0, start:start + n]), np.float32)


def _entries(ids_NxK, vals_NxK, decode, key: str) -> list[list[dict]]:
    return [[{"id": int(i), "token": decode(int(i)), key: float(v)} for i, v in zip(ids, vals)]
            for ids, vals in zip(ids_NxK, vals_NxK)]


def _read(word_VxD, x_NxD, k, decode) -> list[dict]:
    r = nearest(word_VxD, x_NxD, k)
    cos, l2 = _entries(r["cos_ids"], r["cos"], decode, "similarity"), _entries(r["l2_ids"], r["l2"], decode, "distance")
    norms = np.linalg.norm(np.asarray(x_NxD, np.float32), axis=1)
    return [{"index": i, "norm": float(norms[i]), "cosine": cos[i], "l2": l2[i]} for i in range(len(norms))]


def read_prompt(word_VxD, prompt_NxD, *, k: int = 5, p0_NxD=None, layers_YxNxD=None, slot_NxD=None,
                decode=str) -> dict:
    """The reading of one prompt (see the module docstring); plain JSON types.

    Args:
      word_VxD: the model's word-embedding matrix.
      prompt_NxD: the (raw) input prompt.
      k: tokens listed per position.
      p0_NxD: the initial prompt (distance from it per position), or None.
      layers_YxNxD: a deep prompt's per-layer vectors, or None.
      slot_NxD: the zero-prompt slot vectors of an "add" splice (`slot_vectors`), or None.
      decode: token id -> string.
    Returns:
      {"k", "vocab", "word_norms": {median, p5, p95}, "positions": [{index, norm, distance_from_p0, raw: {cosine,
      l2}, input?: {norm, cosine, l2}}], "input_space": null | "word-embedding" | "embedding-output",
      "layers": null | [{layer, positions: [{index, norm, cosine, l2}]}]}; cosine entries {id, token,
      similarity}, l2 entries {id, token, distance}.
    """
    word = np.asarray(word_VxD, np.float32)
    prompt = np.asarray(prompt_NxD, np.float32)
    norms_V = np.linalg.norm(word, axis=1)
    raw = _read(word, prompt, k, decode)
    positions = []
    for i, r in enumerate(raw):
        pos = {"index": i, "norm": r["norm"],
               "distance_from_p0": None if p0_NxD is None else float(np.linalg.norm(prompt[i] - np.asarray(p0_NxD)[i])),
               "raw": {"cosine": r["cosine"], "l2": r["l2"]}}
        positions.append(pos)
    space = None
    if slot_NxD is not None:
        slot = np.asarray(slot_NxD, np.float32)
        n = prompt.shape[0]
        placeholder = word[np.clip(PLACEHOLDER_OFFSET + np.arange(n), 0, word.shape[0] - 1)]
        same = np.allclose(slot, placeholder, atol=1e-5 * (1 + float(np.abs(placeholder).max())))
        space = "word-embedding" if same else "embedding-output"
        for pos, r in zip(positions, _read(word, slot + prompt, k, decode)):
            pos["input"] = {"norm": r["norm"], "cosine": r["cosine"], "l2": r["l2"]}
    layers = None
    if layers_YxNxD is not None:
        layers = [{"layer": y, "positions": _read(word, x_NxD, k, decode)}
                  for y, x_NxD in enumerate(np.asarray(layers_YxNxD, np.float32))]
    return {"k": int(min(k, word.shape[0])), "vocab": int(word.shape[0]),
            "word_norms": {"median": float(np.median(norms_V)), "p5": float(np.percentile(norms_V, 5)),
                           "p95": float(np.percentile(norms_V, 95))},
            "input_space": space, "positions": positions, "layers": layers}


def inspect(h, saved, *, k: int = 5, score: bool = False) -> dict:
    """`read_prompt` of a saved prompt (artifact.SavedPrompt) on its harness `h`; with `score`, the test
    metrics of the soft prompt and of its hard reading (cosine ids; per-layer prompts kept)."""
    word_VxD = np.asarray(h.backbone.word_embeddings(h.model.params))
    tok = h.model.vocab.tokenizer
    slot = slot_vectors(h) if h.layout.splice == "add" else None
    out = {"prompt": str(saved.path), "model": h.model.source, "family": h.model.family.name,
           "placement": h.layout.placement, "n_prompt": int(saved.prompt_NxD.shape[0]),
           "hidden": int(saved.prompt_NxD.shape[1]),
           **read_prompt(word_VxD, saved.prompt_NxD, k=k, p0_NxD=saved.p0_NxD, layers_YxNxD=saved.layers_YxNxD,
                         slot_NxD=slot, decode=lambda i: tok.decode([i]))}
    if score:
        ids = hard_prompt_ids(word_VxD, saved.prompt_NxD)
        prompts_P = jax.tree.map(lambda x: x[None], saved.prompt)
        soft = h.test_metrics(prompts_P)[0]
        out["score"] = {"soft": soft, "hard": score_as_hard_prompt(h, ids, saved.layers_YxNxD),
                        "hard_ids": [int(i) for i in ids], "hard_tokens": [tok.decode([int(i)]) for i in ids]}
    return out


def _cell(entry, key) -> str:
    return f"{entry['token']!r}({entry[key]:.2f})"


def format_table(result: dict) -> str:
    """A readable table of `inspect`'s result."""
    wn = result["word_norms"]
    lines = [f"{result['prompt']}: {result['n_prompt']} x {result['hidden']} prompt, placement {result['placement']}, "
             f"model {result['model']}",
             f"word-embedding norms: median {wn['median']:.3f}, 5% {wn['p5']:.3f}, 95% {wn['p95']:.3f}",
             "pos  norm    |p-p0|  nearest by cosine | nearest by L2"]

    def row(label, norm, extra, r):
        cos = " ".join(_cell(e, "similarity") for e in r["cosine"])
        l2 = " ".join(_cell(e, "distance") for e in r["l2"])
        return f"{label:<4} {norm:<7.3f} {extra:<7} {cos} | {l2}"

    for p in result["positions"]:
        d = "-" if p["distance_from_p0"] is None else f"{p['distance_from_p0']:.3f}"
        lines.append(row(str(p["index"]), p["norm"], d, p["raw"]))
        if "input" in p:
            lines.append(row("  in", p["input"]["norm"], "", p["input"]))
    if result["input_space"]:
        lines.append("'in' rows: the vector fed at the slot (slot vector + prompt), in the "
                     f"{result['input_space']} space")
    for layer in result["layers"] or []:
        lines.append(f"layer {layer['layer']}:")
        lines += [row(str(p["index"]), p["norm"], "", p) for p in layer["positions"]]
    if "score" in result:
        s = result["score"]
        lines.append(f"test, soft prompt: {s['soft']}")
        lines.append(f"test, hard reading {s['hard_tokens']}: {s['hard']}")
    return "\n".join(lines)
