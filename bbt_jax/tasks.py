"""The seven BBT tasks: templates, verbalizers, and fixed-shape token arrays.

Encoder (masked-LM) templates and verbalizers are those of Black-Box-Tuning
`dataloaders/dataloader.py` and `metrics/metrics.py`; decoder templates are ours
(the bbt.py GPT template scores about chance with SmolLM2, see
../shared/notes/smollm2-calibration.md).

A template is a string with the fields {prompt}, {text}, {text_pair} and, for
masked LMs, {mask}. It is tokenized piece by piece so that the N prompt slots
are exact token positions: a space that precedes a field in the template is
given to that field (BPE then tokenizes exactly as the whole string would be),
and dropped before {mask} (RoBERTa's <mask> strips left) and before {prompt}.

Shape letters: B batch rows, L padded length, C classes.
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from collections.abc import Sequence

import numpy as np

from bbt_jax.data import Example
from bbt_jax.errors import UserError
from bbt_jax.types import Buckets, TokenBatch

# Black-Box-Tuning fills the prompt slots with vocab ids 1000..1000+N-1 (dataloader.py).
PLACEHOLDER_OFFSET = 1000

ENCODER_PLACEMENTS = ("add", "cat")
DECODER_PLACEMENTS = ("prefix", "suffix", "cue")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Task:
    """One classification task and its prompts.

    Attributes:
      name: task id (also the data folder name).
      labels: label names, index = label id (../shared/data/labels.json).
      pair: whether examples are sentence pairs.
      metric: "acc" or "f1" (binary F1 of label 1, as bbt.py's MRPC metric).
      encoder_template: bbt.py's masked-LM template with a {prompt} field.
      encoder_words: bbt.py's verbalizer words (no leading space, as bbt.py).
      decoder_input: decoder template part that holds the input.
      decoder_cue: the answer cue that follows the input (and the prompt in
        "suffix" placement); in "cue" placement the soft prompt replaces it.
      decoder_words: single-token label words for SmolLM2 (leading space; tested).
        Where the class name is not one token in SmolLM2's vocabulary we use a
        one-token near-synonym: DBPedia Athlete -> " Sports", OfficeHolder ->
        " Politics", MeanOfTransportation -> " Vehicle", EducationalInstitution ->
        " School", NaturalPlace -> " Nature", Album -> " Music", WrittenWork ->
        " Book"; AG News Sci/Tech -> " Technology" (calibration notes).
      spaced_words: replacements for the leading-space verbalizer where " word"
        is still split (RoBERTa: " Athlete" -> " Ath" + "lete", so " athlete").
    """

    name: str
    labels: tuple[str, ...]
    pair: bool
    metric: str
    encoder_template: str
    encoder_words: tuple[str, ...]
    decoder_input: str
    decoder_cue: str
    decoder_words: tuple[str, ...]
    spaced_words: tuple[tuple[str, str], ...] = ()

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def clean(self, text: str) -> str:
        """Per-task input cleaning, as bbt.py's loaders do."""
        if self.name == "yelpp":
            return text.replace("\\n", " ")
        if self.name == "dbpedia":
            return text.strip()
        return text


_SENT = "{prompt} . {text} . It was {mask} ."
_PAIR = "{prompt} . {text} ? {mask} , {text_pair}"

TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(name="sst2", labels=("negative", "positive"), pair=False, metric="acc",
             encoder_template=_SENT, encoder_words=("bad", "great"),
             decoder_input="Review: {text}", decoder_cue="\nSentiment:",
             decoder_words=(" negative", " positive")),
        Task(name="yelpp", labels=("negative", "positive"), pair=False, metric="acc",
             encoder_template=_SENT, encoder_words=("bad", "great"),
             decoder_input="Review: {text}", decoder_cue="\nSentiment:",
             decoder_words=(" negative", " positive")),
        Task(name="agnews", labels=("World", "Sports", "Business", "Sci/Tech"), pair=False,
             metric="acc", encoder_template="{prompt} . {mask} News: {text}",
             encoder_words=("World", "Sports", "Business", "Tech"),
             decoder_input="Article: {text}", decoder_cue="\nTopic:",
             decoder_words=(" World", " Sports", " Business", " Technology")),
        Task(name="dbpedia",
             labels=("Company", "EducationalInstitution", "Artist", "Athlete", "OfficeHolder",
                     "MeanOfTransportation", "Building", "NaturalPlace", "Village", "Animal",
                     "Plant", "Album", "Film", "WrittenWork"),
             pair=False, metric="acc", encoder_template="{prompt} [ Category: {mask} ] {text}",
             encoder_words=("Company", "Education", "Artist", "Athlete", "Office",
                            "Transportation", "Building", "Natural", "Village", "Animal",
                            "Plant", "Album", "Film", "Written"),
             decoder_input="Text: {text}", decoder_cue="\nCategory:",
             decoder_words=(" Company", " School", " Artist", " Sports", " Politics",
                            " Vehicle", " Building", " Nature", " Village", " Animal",
                            " Plant", " Music", " Film", " Book"),
             spaced_words=(("Athlete", "athlete"),)),
        Task(name="mrpc", labels=("not_equivalent", "equivalent"), pair=True, metric="f1",
             encoder_template=_PAIR, encoder_words=("No", "Yes"),
             decoder_input="Sentence 1: {text}\nSentence 2: {text_pair}\nAre the two sentences paraphrases?",
             decoder_cue="\nAnswer:", decoder_words=(" No", " Yes")),
        Task(name="snli", labels=("entailment", "neutral", "contradiction"), pair=True,
             metric="acc", encoder_template=_PAIR, encoder_words=("Yes", "Maybe", "No"),
             decoder_input="Premise: {text}\nHypothesis: {text_pair}\nIs the hypothesis true given the premise? "
                           "Answer yes, maybe or no.",
             decoder_cue="\nAnswer:", decoder_words=(" yes", " maybe", " no")),
        Task(name="rte", labels=("entailment", "not_entailment"), pair=True, metric="acc",
             encoder_template=_PAIR, encoder_words=("Yes", "No"),
             decoder_input="Premise: {text}\nHypothesis: {text_pair}",
             decoder_cue="\nDoes the premise imply the hypothesis?",
             decoder_words=(" Yes", " No")),
    )
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise UserError(f"--task {name}: unknown task (choose from {', '.join(TASKS)})")
    return TASKS[name]


def with_template(task: Task, *, template: str = "", cue: str = "", label_words: str = "") -> Task:
    """The task with another template / cue / label words (--template, --cue, --label-words; empty keeps
    the task's). The template replaces the masked-LM template and the decoder input part alike (only the
    model's kind reads its own); its fields are checked here, one line naming the flag."""
    changes: dict = {}
    if template:
        need = ["{text}"] + (["{text_pair}"] if task.pair else [])
        masked_ok = all(f in template for f in need + ["{prompt}", "{mask}"])
        decoder_ok = all(f in template for f in need) and "{prompt}" not in template and "{mask}" not in template
        if not (masked_ok or decoder_ok):
            raise UserError(f"--template {template!r}: needs {' and '.join(need)} (masked LMs also {{prompt}} and "
                            "{mask}; decoders neither: the prompt and cue follow the input)")
        if masked_ok:
            changes["encoder_template"] = template
        if decoder_ok:
            changes["decoder_input"] = template
    if cue:
        changes["decoder_cue"] = cue
    if label_words:
        words = tuple(label_words.split("|"))
        if len(words) != task.num_labels or not all(w.strip() for w in words):
            raise UserError(f"--label-words {label_words!r}: {task.name} takes {task.num_labels} non-empty words "
                            f"separated by '|' (labels {', '.join(task.labels)})")
        changes.update(encoder_words=words, decoder_words=words)
    return dataclasses.replace(task, **changes) if changes else task


@dataclasses.dataclass(frozen=True)
class Vocab:
    """What the encoder needs to know about a tokenizer.

    Attributes:
      tokenizer: a `tokenizers.Tokenizer`.
      kind: "masked" (answer at <mask>) or "causal" (answer after the last token),
        the family's kind (models/family.py).
      bos_id / eos_id: added around every row when not None.
      mask_id: the <mask> id (masked LMs only).
      pad_id: id written into padded positions.
    """

    tokenizer: object
    kind: str
    pad_id: int
    bos_id: int | None = None
    eos_id: int | None = None
    mask_id: int | None = None

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)


def template_for(task: Task, vocab: Vocab, placement: str) -> str:
    """The template string for a model kind (masked / causal) and a prompt placement."""
    if vocab.kind == "masked":
        if placement not in ENCODER_PLACEMENTS:
            raise UserError(f"--placement {placement}: masked LMs take one of {ENCODER_PLACEMENTS}")
        if placement == "cat":
            # bbt.py's cat mode: the template without "<prompt> ."; the vectors go before <s>
            # (modeling_roberta.py: torch.cat([prompt_embedding, embedding_output])). They carry no
            # position, so after <s> would give the same logits (tests/models/test_roberta.py).
            body = re.sub(r"^\{prompt\}( \.)? ", "", task.encoder_template)
            return "{prompt}{bos}" + body
        return task.encoder_template
    if placement not in DECODER_PLACEMENTS:
        raise UserError(f"--placement {placement}: decoder LMs take one of {DECODER_PLACEMENTS}")
    if placement == "prefix":
        return "{prompt}" + task.decoder_input + task.decoder_cue
    if placement == "suffix":
        return task.decoder_input + "{prompt}" + task.decoder_cue
    return task.decoder_input + "{prompt}"


FIELD = re.compile(r"\{(prompt|text|text_pair|mask|bos)\}")  # {bos}: <s> goes here, not first


def _pieces(template: str) -> list[tuple[str, str]]:
    """Split a template into ("lit", s) and ("field", name) pieces; spaces move to fields."""
    out: list[tuple[str, str]] = []
    pos = 0
    for m in FIELD.finditer(template):
        lit = template[pos:m.start()]
        lead = ""
        if lit.endswith(" "):
            lit, lead = lit[:-1], " "
        if lit:
            out.append(("lit", lit))
        out.append(("field", lead + m.group(1)))
        pos = m.end()
    if template[pos:]:
        out.append(("lit", template[pos:]))
    return out


@dataclasses.dataclass(frozen=True)
class Encoded:
    """One templated row before padding."""

    ids: list[int]
    prompt_start: int
    answer_pos: int
    label: int


def encode_example(ex: Example, task: Task, vocab: Vocab, template: str, n_prompt: int,
                   max_length: int) -> Encoded:
    """Tokenize one example; truncate the input text (never template or prompt)."""
    return _encode(ex, task, vocab, template, n_prompt, max_length)[0]


def _encode(ex: Example, task: Task, vocab: Vocab, template: str, n_prompt: int,
            max_length: int) -> tuple[Encoded, int]:
    """encode_example, plus the row's length before truncation."""
    pieces = _pieces(template)
    texts = {}
    for kind, name in pieces:
        if kind == "field" and name.strip() in ("text", "text_pair"):
            raw = ex.text if name.strip() == "text" else ex.text_pair
            lead = " " if name.startswith(" ") else ""
            texts[name.strip()] = vocab.encode(lead + task.clean(raw or ""))
    fixed = sum(len(vocab.encode(s)) for k, s in pieces if k == "lit")
    fixed += n_prompt + (vocab.mask_id is not None and vocab.kind == "masked")
    fixed += (vocab.bos_id is not None) + (vocab.eos_id is not None)
    full_length = fixed + sum(len(t) for t in texts.values())
    budget = max_length - fixed
    if budget < 1:
        raise UserError(f"--max-length {max_length}: too short for the template and {n_prompt} prompt tokens "
                        f"(needs more than {fixed})")
    # Truncate the longest text first (HF's "longest_first"), from the end.
    while sum(len(t) for t in texts.values()) > budget:
        longest = max(texts, key=lambda k: len(texts[k]))
        texts[longest] = texts[longest][:-1]

    bos_placed = any(name == "bos" for _, name in pieces)
    ids: list[int] = [vocab.bos_id] if vocab.bos_id is not None and not bos_placed else []
    prompt_start = answer_pos = -1
    for kind, name in pieces:
        if kind == "lit":
            ids += vocab.encode(name)
        elif name == "bos":
            ids += [vocab.bos_id] if vocab.bos_id is not None else []
        elif name.strip() == "prompt":
            prompt_start = len(ids)
            ids += list(range(PLACEHOLDER_OFFSET, PLACEHOLDER_OFFSET + n_prompt))
        elif name.strip() == "mask":
            answer_pos = len(ids)
            ids.append(vocab.mask_id)
        else:
            ids += texts[name.strip()]
    if vocab.eos_id is not None:
        ids.append(vocab.eos_id)
    if vocab.kind == "causal":
        answer_pos = len(ids) - 1
    if prompt_start < 0 or answer_pos < 0:
        raise UserError(f"template {template!r}: needs {{prompt}} and an answer position")
    return Encoded(ids, prompt_start, answer_pos, ex.label), full_length


OVERFLOWS = ("truncate", "drop")


@dataclasses.dataclass(frozen=True)
class EncodedSplit:
    """The encoded rows of one split and what happened to over-long rows.

    Attributes:
      rows: the encoded rows, in input order (dropped rows left out).
      dropped: rows left out ("drop": longer than the limit under bbt.py's rule).
      truncated: kept rows whose input text was cut to fit `max_length`.
    """

    rows: list[Encoded]
    dropped: int
    truncated: int


def original_length(ex: Example, task: Task, vocab: Vocab, template: str, n_prompt: int) -> int:
    """The row length that Black-Box-Tuning compares with 512 (dataloaders/dataloader.py).

    bbt.py's loaders build one string and keep a row iff
    `len(tokenizer(input_text)["input_ids"]) <= 512`: the whole string tokenized with
    <s> ... </s>, never truncated. In "add" mode the string starts with the prompt as
    text, `tokenizer.decode(range(1000, 1000 + N))` (re-tokenized, so not always N
    tokens); in "cat" mode the loader is built with n_prompt_tokens=0, so the string has
    no prompt at all and the N prompt vectors are not counted. Masked LMs only; for a
    causal LM (our own templates) this is the untruncated length of our encoding.
    """
    if vocab.kind != "masked":
        return _encode(ex, task, vocab, template, n_prompt, 10**9)[1]
    cat = template == template_for(task, vocab, "cat")
    prompt = "" if cat else vocab.tokenizer.decode(list(range(PLACEHOLDER_OFFSET, PLACEHOLDER_OFFSET + n_prompt)))
    mask = vocab.tokenizer.id_to_token(vocab.mask_id)
    s = template.format(prompt=prompt, bos="", mask=mask, text=task.clean(ex.text),
                        text_pair=task.clean(ex.text_pair or ""))
    return len(vocab.tokenizer.encode(s, add_special_tokens=True).ids)


def encode_split(examples: Sequence[Example], task: Task, vocab: Vocab, template: str, n_prompt: int,
                 max_length: int, *, overflow: str = "truncate") -> EncodedSplit:
    """Encode a split; over-long rows are truncated or dropped.

    overflow="truncate": every row is kept; where it is longer than `max_length` its
      input text is cut (never template or prompt) and it is counted as truncated.
    overflow="drop": bbt.py's rule, rows whose `original_length` exceeds `max_length`
      (512 in bbt.py) are left out and counted as dropped. A kept row is never cut
      unless our encoding is longer than bbt.py's string ("cat" mode adds the N prompt
      slots); such rows are truncated to `max_length` and counted as truncated.
    """
    if overflow not in OVERFLOWS:
        raise UserError(f"--overflow {overflow}: choose from {OVERFLOWS}")
    rows, dropped, truncated = [], 0, 0
    for ex in examples:
        if overflow == "drop" and original_length(ex, task, vocab, template, n_prompt) > max_length:
            dropped += 1
            continue
        enc, full = _encode(ex, task, vocab, template, n_prompt, max_length)
        truncated += full > max_length
        rows.append(enc)
    return EncodedSplit(rows, dropped, truncated)


def verbalizer_ids(task: Task, vocab: Vocab, *, leading_space: bool = False) -> np.ndarray:
    """Label-word token ids, one per class.

    Masked LMs follow bbt.py exactly: `encode(word, add_special_tokens=False)[0]`
    with the word WITHOUT a leading space, so some DBPedia words are cut to their
    first piece (warned once). `leading_space=True` uses " word", where every word
    is one token. Decoder words already carry their space and must be one token.
    """
    words = task.encoder_words if vocab.kind == "masked" else task.decoder_words
    if vocab.kind == "masked" and leading_space:
        swap = dict(task.spaced_words)
        words = tuple(" " + swap.get(w, w) for w in words)
    ids, split = [], []
    for w in words:
        toks = vocab.encode(w)
        if not toks:
            raise UserError(f"verbalizer word {w!r} of task {task.name}: tokenizes to nothing")
        if len(toks) > 1:
            if vocab.kind == "causal" or leading_space:
                raise UserError(f"verbalizer word {w!r} of task {task.name}: not a single token {toks}")
            split.append(w)
        ids.append(toks[0])
    if split:
        warnings.warn(f"{task.name}: verbalizer words {split} split into several tokens; using the first "
                      "piece as bbt.py does (pass --verbalizer-space for single-token words)", stacklevel=2)
    seen: dict[int, str] = {}
    for w, i in zip(words, ids):
        if i in seen:
            raise UserError(f"verbalizer of task {task.name}: {seen[i]!r} and {w!r} share token id {i}")
        seen[i] = w
    return np.asarray(ids, np.int32)


def _round_up(n: int, multiple: int) -> int:
    return int(math.ceil(n / multiple) * multiple)


def pad_batch(rows: Sequence[Encoded], length: int, pad_id: int, num_rows: int | None = None) -> TokenBatch:
    """Right-pad rows to `length`; add weight-0 rows up to `num_rows`."""
    num_rows = num_rows or len(rows)
    ids = np.full((num_rows, length), pad_id, np.int32)
    mask = np.zeros((num_rows, length), np.int32)
    start = np.zeros(num_rows, np.int32)
    answer = np.zeros(num_rows, np.int32)
    labels = np.zeros(num_rows, np.int32)
    weight = np.zeros(num_rows, np.float32)
    for i, r in enumerate(rows):
        ids[i, :len(r.ids)] = r.ids
        mask[i, :len(r.ids)] = 1
        start[i], answer[i], labels[i], weight[i] = r.prompt_start, r.answer_pos, r.label, 1.0
    if len(rows) < num_rows:  # padding rows: a valid one-token row that never counts
        mask[len(rows):, 0] = 1
    return TokenBatch(ids, mask, start, answer, labels, weight)


def make_buckets(rows: Sequence[Encoded], pad_id: int, *, num_buckets: int = 1,
                 multiple: int = 8, lengths: Sequence[int] | None = None) -> Buckets:
    """Split rows by length into `num_buckets` fixed-shape batches (one call runs them all).

    `lengths`: pad bucket j to at least lengths[j] (bucket_lengths of other splits: several few-shot
    splits of one task in one shape, e.g. seeds stacked by sweep.py)."""
    if not rows:
        raise UserError("no rows to batch")
    order = sorted(rows, key=lambda r: len(r.ids))
    num_buckets = max(1, min(num_buckets, len(order)))
    groups = [g for g in np.array_split(np.arange(len(order)), num_buckets) if len(g)]
    least = list(lengths) if lengths is not None else [0] * len(groups)
    if len(least) != len(groups):
        raise ValueError(f"{len(least)} bucket lengths for {len(groups)} buckets")
    return tuple(
        pad_batch([order[i] for i in g], max(_round_up(max(len(order[i].ids) for i in g), multiple), m), pad_id)
        for g, m in zip(groups, least)
    )


def bucket_lengths(buckets: Buckets) -> tuple[int, ...]:
    """The padded length of each bucket."""
    return tuple(int(b.input_ids_BxL.shape[1]) for b in buckets)


def make_eval_batches(rows: Sequence[Encoded], pad_id: int, *, batch_rows: int = 32,
                      multiple: int = 16, num_buckets: int = 0) -> list[TokenBatch]:
    """Fixed-size batches for dev/test scoring, sorted by length (few distinct shapes).

    Rows are sorted by length and cut into chunks of `batch_rows` (the last one filled
    with weight-0 rows). num_buckets=0: each chunk is padded to its own longest row,
    rounded up to `multiple` (one compiled shape per distinct length). num_buckets=n > 0:
    at most n distinct lengths, chosen among the chunks' own lengths to minimise the
    padded tokens (`bucket_limits`); each chunk is padded to the smallest that holds it.
    """
    if num_buckets < 0:
        raise UserError(f"--eval-buckets {num_buckets}: must be >= 0")
    order = sorted(rows, key=lambda r: len(r.ids))
    chunks = [order[i:i + batch_rows] for i in range(0, len(order), batch_rows)]
    lengths = [_round_up(max(len(r.ids) for r in c), multiple) for c in chunks]
    if num_buckets:
        limits = bucket_limits(lengths, num_buckets)
        lengths = [next(b for b in limits if b >= L) for L in lengths]
    return [pad_batch(c, L, pad_id, batch_rows) for c, L in zip(chunks, lengths)]


def bucket_limits(lengths: Sequence[int], num_buckets: int) -> list[int]:
    """At most `num_buckets` limits, the largest = max(lengths), that minimise the sum
    over items of (smallest limit >= length): an exact dynamic programme over the
    distinct lengths (each bucket is a contiguous run of them; its limit is its last)."""
    if not lengths:
        return []
    values = sorted(set(lengths))
    counts = [sum(1 for L in lengths if L == v) for v in values]
    m, k = len(values), min(num_buckets, len(values))
    before = np.concatenate([[0], np.cumsum(counts)])  # items with length < values[j]
    INF = float("inf")
    # cost[b][j]: least padded sum for the first j values in b buckets; back[b][j]: start of the last bucket
    cost = [[INF] * (m + 1) for _ in range(k + 1)]
    back = [[0] * (m + 1) for _ in range(k + 1)]
    cost[0][0] = 0
    for b in range(1, k + 1):
        for j in range(1, m + 1):
            for i in range(j):  # last bucket holds values[i:j], padded to values[j - 1]
                c = cost[b - 1][i] + values[j - 1] * (before[j] - before[i])
                if c < cost[b][j]:
                    cost[b][j], back[b][j] = c, i
    b = min(range(1, k + 1), key=lambda b: cost[b][m])
    limits, j = [], m
    while j > 0:
        limits.append(values[j - 1])
        j, b = back[b][j], b - 1
    return sorted(limits)


def padded_tokens(batches: Sequence[TokenBatch]) -> int:
    """Token positions computed, padding included (rows x length, summed over batches)."""
    return int(sum(np.asarray(b.input_ids_BxL).size for b in batches))


def real_tokens(batches: Sequence[TokenBatch]) -> int:
    """Tokens that are not padding, summed over batches."""
    return int(sum(np.asarray(b.attention_mask_BxL)[np.asarray(b.weight_B) > 0].sum() for b in batches))
