"""One task bound to one model: task rows -> tokens -> fitness, and the projection of a seed.

`build(cfg)` reads the splits (data.py), loads the model through the family registry
(models/registry.py), lets the family lay the task out (template, N, p0, input cache), and
encodes the rows (tasks.py). The `Harness` it returns hands out what every method needs:
`fitness(split)` (the fitness contract), `projection()`, `problem(split)` (fitness +
projection, the evosax-style problem), `search()` and the test batches. It holds no search
state; train.py orchestrates a run from it.

Shape letters: see bbt_jax/types.py.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from bbt_jax import data as data_lib
from bbt_jax import demos as demos_lib
from bbt_jax import tasks as tasks_lib
from bbt_jax.config import GRADIENT_METHODS, Config
from bbt_jax.deep import DeepProjection, layer_stds, make_deep_projection, sequential_generations, zero_layers
from bbt_jax.errors import UserError
from bbt_jax.fitness import EvalData, Fitness, prepare_rows, rows_key, split_metrics
from bbt_jax.gradient import GradientSearch
from bbt_jax.models import hf
from bbt_jax.models.family import Backbone, LoadedModel, make_frozen
from bbt_jax.models.registry import load
from bbt_jax.problem import PromptProblem
from bbt_jax.prompt import Identity, Projection, embedding_std, make_projection
from bbt_jax.search import Search
from bbt_jax.strategy import make_strategy, with_refinement, with_restart
from bbt_jax.types import Buckets, TokenBatch
from bbt_jax.verbalizer import choose_words


def default_pop_chunk(kind: str, backend: str | None = None, devices: int | None = None) -> int:
    """--pop-chunk -1: the population chunk that measured fastest (BENCHMARKS.md, both CPU kinds). On one CPU
    device, masked LMs (RoBERTa: every member runs the whole sequence) go 4 members at a time (roberta-base
    1.2-1.6x faster than one vmap on the Intel Xeon and AMD EPYC VMs), decoders keep the one vmap (their
    members share the input cache; chunks of 4 were 1.2x slower on the SmolLM2 demo, AMD EPYC). GPU/TPU and
    several devices (a sharded population): the one vmap."""
    backend = backend or jax.default_backend()
    devices = jax.device_count() if devices is None else devices
    return 4 if backend == "cpu" and devices == 1 and kind == "masked" else 0


@dataclasses.dataclass(frozen=True, eq=False)
class Harness:
    """What stays fixed during a run (see the module docstring)."""

    cfg: Config
    task: tasks_lib.Task
    model: LoadedModel
    backbone: Backbone
    verbalizer_C: np.ndarray
    frozen: dict
    encoded: dict  # split name -> list[tasks.Encoded]
    overflow: dict  # split name -> {"dropped": rows, "truncated": rows}
    demo_draw: int = 0  # the --demo-draws draw kept (choose_demos)
    _fitness: dict = dataclasses.field(default_factory=dict, repr=False)  # split -> prepared Fitness

    @property
    def layout(self):
        return self.backbone.layout

    @property
    def keys(self) -> tuple[jax.Array, jax.Array]:
        """(projection key, search key): split(PRNGKey(seed)) as one seed always did; --projection-seed /
        --es-seed replace the seed of one of them."""
        r = self.cfg.run
        k_proj = jax.random.split(jax.random.PRNGKey(r.seed_of("projection")))[0]
        k_search = jax.random.split(jax.random.PRNGKey(r.seed_of("es")))[1]
        return k_proj, k_search

    def buckets(self, split: str, lengths: tuple[int, ...] | None = None) -> Buckets:
        """Fixed-shape length buckets of a split (train/dev: all run inside one compiled call); `lengths`:
        pad bucket j to at least lengths[j] (one shape for the splits of several seeds)."""
        return tasks_lib.make_buckets(self.encoded[split], self.model.vocab.pad_id,
                                      num_buckets=self.cfg.prompt.num_buckets, lengths=lengths)

    @functools.cached_property
    def test_batches(self) -> list[TokenBatch]:
        return tasks_lib.make_eval_batches(self.encoded["test"], self.model.vocab.pad_id,
                                           batch_rows=self.cfg.run.eval_batch, num_buckets=self.cfg.run.eval_buckets)

    def test_metrics(self, prompts_P) -> list[dict]:
        """Test metrics of P prompts (stacked on a leading axis) in one pass over the test batches; the
        prepared batches are kept on the loaded model, so later runs on the same rows reuse them, and so are
        the logits of prompts already scored there (the same start prompt in every cell of a sweep)."""
        m = self.cfg.model
        return split_metrics(self.backbone, self.frozen, self.test_batches, prompts_P, self.task.metric,
                             cache=self.model.prepared,
                             scored=self.model.scored.setdefault((m.dtype, m.zero_lm_head_bias), {}))

    def fitness(self, split: str = "train", lengths: tuple[int, ...] | None = None) -> Fitness:
        """The fitness contract on a split (prepared once): the run's loss and metric; the population
        chunk on train. `lengths`: the buckets' padded lengths (see `buckets`)."""
        if (split, lengths) not in self._fitness:
            self._fitness[split, lengths] = self.bind(split, self.prepared_rows(split, lengths))
        return self._fitness[split, lengths]

    def bind(self, split: str, data: EvalData) -> Fitness:
        """The fitness contract of `split` on prepared rows `data` (this run's, or a seed group's stack)."""
        return Fitness(self.frozen, data, self.backbone.score, self.cfg.search.loss, self.task.metric,
                       self.pop_chunk if split == "train" else 0)

    def prepared_rows(self, split: str, lengths: tuple[int, ...] | None = None) -> EvalData:
        """A split's rows prepared now (the decoder's input cache), not kept: `fitness` keeps them."""
        return prepare_rows(self.backbone, self.frozen, self.buckets(split, lengths))

    def rows_key(self, split: str, lengths: tuple[int, ...] | None = None) -> tuple:
        """What identifies `prepared_rows(split, lengths)` across harnesses of one loaded model (fitness.rows_key)."""
        return rows_key(self.backbone, self.frozen, self.buckets(split, lengths))

    def with_verbalizer(self, ids_CxW) -> Harness:
        """This harness scoring the label word ids `ids_CxW` (C, or C x W for several words per class); its
        prepared splits are not carried over (they hold the verbalizer)."""
        frozen = {**self.frozen, "verbalizer": jax.numpy.asarray(ids_CxW, jax.numpy.int32)}
        return dataclasses.replace(self, verbalizer_C=ids_CxW, frozen=frozen, _fitness={})

    def release_fitness(self) -> None:
        """Forget the prepared splits (`fitness`); a later call prepares them again."""
        self._fitness.clear()

    @property
    def pop_chunk(self) -> int:
        """--pop-chunk as it takes effect; -1 resolves per backend and model (default_pop_chunk)."""
        chunk = self.cfg.search.pop_chunk
        return chunk if chunk >= 0 else default_pop_chunk(self.model.family.kind)

    @property
    def method(self) -> str:
        return self.cfg.search.method

    @property
    def deep(self) -> bool:
        """A prompt at every layer (bbtv2, deep-prompt-tuning)."""
        return self.method in ("bbtv2", "deep-prompt-tuning")

    @property
    def gradient(self) -> bool:
        return self.method in GRADIENT_METHODS

    @functools.cached_property
    def projection(self) -> Projection | DeepProjection | Identity:
        """candidate -> prompt. bbt: bbt.py's A z + p0 (std from the word embeddings, A from the seed's key);
        bbtv2: deepbbt.py's A_i z_i per layer (deep.py); gradient methods: the candidate is the prompt."""
        p = self.cfg.prompt
        word_VxD = np.asarray(self.backbone.word_embeddings(self.model.params))
        if self.gradient:
            return Identity()
        if self.method == "bbtv2":
            return make_deep_projection(self.keys[0], intrinsic_dim=p.intrinsic_dim, p0_NxD=self.layout.p0,
                                        stds_Y=self.layer_stds, alpha=p.alpha, sigma=self.cfg.projection_sigma,
                                        kind=p.random_proj)
        return make_projection(self.keys[0], intrinsic_dim=p.intrinsic_dim, p0_NxD=self.layout.p0,
                               embed_std=embedding_std(word_VxD), alpha=p.alpha,
                               sigma=self.cfg.projection_sigma, kind=p.random_proj)

    @functools.cached_property
    def layer_stds(self) -> np.ndarray:
        """deepbbt.py's std_hat per layer (deep.layer_stds), measured once on the training rows at z = 0."""
        word_VxD = np.asarray(self.backbone.word_embeddings(self.model.params))
        x0 = zero_layers(self.layout.p0, self.backbone.num_layers)
        measured = [(_layer_inputs(self.backbone, self.frozen, b, x0), b.attention_mask_BxL)
                    for b in self.buckets("train")]
        return layer_stds(word_VxD, jax.device_get(measured))

    @property
    def calls_per_generation(self) -> int:
        """Calls (full passes over the training rows) per generation: the population, or 1 gradient step."""
        return 1 if self.gradient else self.cfg.search.popsize

    @property
    def start(self):
        """The candidate the method starts from (its zero-shot prompt): z = 0, or x0 for gradient methods."""
        if self.gradient:
            return self.x0
        k = self.cfg.prompt.intrinsic_dim
        shape = (self.backbone.num_layers, k) if self.method == "bbtv2" else (k,)
        return jax.numpy.zeros(shape, jax.numpy.float32)

    @property
    def x0(self):
        """The candidate at the start: z = 0 (ES methods), or the prompt p0 itself (gradient methods; zeros at
        every layer for deep prompt tuning)."""
        if self.method == "prompt-tuning":
            return jax.numpy.asarray(self.layout.p0, jax.numpy.float32)
        if self.method == "deep-prompt-tuning":
            return zero_layers(self.layout.p0, self.backbone.num_layers)
        return None

    def problem(self, split: str = "train", projection: Projection | None = None,
                lengths: tuple[int, ...] | None = None) -> PromptProblem:
        return PromptProblem(self.fitness(split, lengths), self.projection if projection is None else projection)

    def search(self, mesh: jax.sharding.Mesh | None = None):
        """The method's search: search.Search (bbt, bbtv2) or gradient.GradientSearch (gradient methods);
        `mesh`: shard the population over it (ES methods; distributed.mesh() in a multi-process run)."""
        s = self.cfg.search
        if self.gradient:
            return GradientSearch(self.x0, config=s, gradient=self.cfg.gradient)
        layers = self.backbone.num_layers if self.method == "bbtv2" else 0
        strategy = make_strategy(s.strategy, popsize=s.popsize, num_dims=self.cfg.prompt.intrinsic_dim,
                                 sigma=s.sigma, es_params=s.es_params, rank_ties=s.rank_ties, layers=layers,
                                 layer_schedule=s.layer_schedule)
        generations = None
        if layers and s.layer_schedule == "sequential":
            generations = sequential_generations(s.budget, s.popsize, layers)
        if s.refine_at:
            strategy = with_refinement(strategy, switch=round(s.refine_at * s.generations), sigma=s.refine_sigma)
        if s.cv_switch:
            strategy = with_restart(strategy, switch=s.cv_switch)
        return Search(strategy, config=s, generations=generations, mesh=mesh, swap_at=s.cv_switch)

    def rows(self, split: str) -> int:
        return len(self.encoded[split])

    def overflow_note(self) -> str | None:
        """One line when --max-length cut or dropped rows (results.json "rows" has the counts): with
        --demos on a task of long texts the demonstrations can leave little of each row's own text."""
        cut = [f"{k} {v['truncated']} of {self.rows(k)} cut" + (f", {v['dropped']} dropped" if v["dropped"] else "")
               for k, v in self.overflow.items() if v["truncated"] or v["dropped"]]
        if not cut:
            return None
        return (f"note: --max-length {self.cfg.prompt.max_length} (the input text is cut, never the template"
                f"{' and its demonstrations' if self.cfg.prompt.demos else ''}): rows {'; '.join(cut)}")

    def effective(self) -> dict:
        """Every setting as it took effect (flat names, as the flags); null where this run ignores it."""
        cfg, kind = self.cfg, self.model.family.kind
        out = {k: v for group in dataclasses.asdict(cfg).values() for k, v in group.items()}
        r, s = cfg.run, cfg.search
        if self.gradient:  # no strategy, no projection; the gradient settings apply
            out.update({k: None for k in ("strategy", "es_params", "sigma", "popsize", "rank_ties", "bound",
                                          "bound_handling", "intrinsic_dim", "alpha", "proj_sigma", "random_proj",
                                          "pop_chunk", "es_seed", "dev_candidate")})
        else:
            strategy = self.search().strategy
            out.update(bound=s.bound or None, bound_handling=s.bound_handling if s.bound > 0 else None)
            out.update({f.name: None for f in dataclasses.fields(cfg.gradient)})
            out.update(proj_sigma=cfg.projection_sigma, strategy=strategy.name,
                       es_params=dict(strategy.overrides) or None, sigma=s.sigma if strategy.sigma_applies else None,
                       projection_seed=r.seed_of("projection"), es_seed=r.seed_of("es"))
        if not self.gradient:
            out.update(pop_chunk=self.pop_chunk)
        out.update(
            n_prompt_tokens=self.layout.n_prompt, placement=self.layout.placement, family=self.model.family.name,
            layers=self.backbone.num_layers if self.deep else None,
            layer_schedule=s.layer_schedule if self.method == "bbtv2" else None,
            split_seed=r.seed_of("split"), demo_draw=self.demo_draw if cfg.prompt.demos else None,
            init_prompt=cfg.prompt.init_prompt or None,
            test_rows=self.rows("test"), random_weights=self.model.random_weights,
            zero_lm_head_bias=cfg.model.zero_lm_head_bias if kind == "masked" else None,
            verbalizer_space=cfg.prompt.verbalizer_space if kind == "masked" else None,
            decoder_splice=self.layout.splice if kind == "causal" else None,
            tokenizer=cfg.model.tokenizer or None)
        if r.data_source == "tfds":
            from bbt_jax.tfds_source import resolve

            out.update(tfds_name=resolve(self.task.name, r.tfds_name, r.k_shot, r.seed_of("split"), r.split),
                       tfds_data_dir=r.tfds_data_dir or None)
        else:
            out.update(tfds_name=None, tfds_data_dir=None)
        return out


_layer_inputs = jax.jit(lambda backbone, frozen, batch, prompt: backbone.layer_inputs(frozen, batch, prompt),
                        static_argnums=0)


VOCAB_INIT_IDS = 5000


def initial_prompt(kind: str, word_VxD, n: int, seed: int) -> np.ndarray:
    """p0 (N x D) of --prompt-init vocab / random, drawn from `seed` (the projection's)."""
    rng = np.random.default_rng(seed)
    word_VxD = np.asarray(word_VxD, np.float32)
    if kind == "vocab":
        ids = rng.choice(min(VOCAB_INIT_IDS, word_VxD.shape[0]), size=n, replace=False)
        return word_VxD[ids].copy()
    return rng.normal(0.0, embedding_std(word_VxD), (n, word_VxD.shape[1])).astype(np.float32)


def read_splits(cfg: Config, task: tasks_lib.Task) -> dict:
    """train/dev/test examples of the run's task and split, from --data-dir's JSONL or from tfds
    (tfds_source.py); empty or one-class train is an error."""
    r = cfg.run
    if r.data_source == "tfds":
        from bbt_jax import tfds_source

        splits, paths = tfds_source.read_splits(r, task)
    else:
        paths = data_lib.split_paths(Path(r.data_dir), task.name, r.k_shot, r.seed_of("split"), split=r.split)
        splits = {k: data_lib.read_jsonl(p, task.num_labels, pair=task.pair) for k, p in paths.items()}
    data_lib.check_train_split(splits["train"], paths["train"], task.num_labels)
    if not splits["dev"]:
        raise UserError(f"{paths['dev']}: the dev split is empty")
    if cfg.run.test_rows:
        splits["test"] = splits["test"][:cfg.run.test_rows]
    return splits


def build(cfg: Config, *, default_tokenizer: str | Path | None = None, model: LoadedModel | None = None,
          log: Callable = print) -> Harness:
    """Everything a run needs, validated before any search starts."""
    p = cfg.prompt
    task = tasks_lib.with_template(tasks_lib.get_task(cfg.run.task), template=p.template, cue=p.cue,
                                   label_words=p.label_words)
    splits = read_splits(cfg, task)
    model = model or load(cfg.model.model, cfg.model.tokenizer, default_tokenizer=default_tokenizer)
    family = model.family
    if cfg.prompt.placement not in family.placements:
        kind = {"masked": "masked LMs", "causal": "decoder LMs"}[family.kind]
        raise UserError(f"--placement {cfg.prompt.placement}: {kind} take one of {family.placements}")
    if cfg.prompt.demos and family.kind != "causal":
        raise UserError(f"--demos {cfg.prompt.demos}: decoder LMs only (a masked LM's template holds one row)")
    task, splits["train"], draw = choose_demos(cfg, task, splits["train"], model, log)
    h = assemble(cfg, task, splits, model, demo_draw=draw)
    if cfg.prompt.words_per_class > 1:  # M2: the words chosen on the training rows at the starting prompt
        h = h.with_verbalizer(choose_words(h, cfg.prompt.words_per_class))
    return h


def assemble(cfg: Config, task: tasks_lib.Task, splits: dict, model: LoadedModel, demo_draw: int = 0) -> Harness:
    """The harness of `task` (its template final) on `splits` (name -> rows; any subset of train/dev/test)."""
    family, vocab = model.family, model.vocab
    word_VxD = np.asarray(family.word_embeddings(model.params))
    layout = family.layout(task, vocab, cfg.prompt, word_VxD)
    if cfg.prompt.prompt_init != "placement" and not cfg.prompt.init_prompt:
        layout = dataclasses.replace(layout, p0=initial_prompt(cfg.prompt.prompt_init, word_VxD, layout.p0.shape[0],
                                                                cfg.run.seed_of("projection")))
    if cfg.prompt.init_prompt:
        p0_NxD = hf.read_prompt_tensor(cfg.prompt.init_prompt)
        if p0_NxD.shape != layout.p0.shape:
            raise UserError(f"--init-prompt {cfg.prompt.init_prompt}: a {p0_NxD.shape[0]} x {p0_NxD.shape[-1]} "
                            f"prompt, but this model and placement take {layout.p0.shape[0]} x {layout.p0.shape[1]}")
        layout = dataclasses.replace(layout, p0=p0_NxD)
    verbalizer_C = tasks_lib.verbalizer_ids(task, vocab, leading_space=cfg.prompt.verbalizer_space)
    encoded, overflow = {}, {}
    for k, rows in splits.items():
        enc = tasks_lib.encode_split(rows, task, vocab, layout.template, layout.n_prompt, cfg.prompt.max_length,
                                     overflow=cfg.prompt.overflow)
        if not enc.rows:
            raise UserError(f"--max-length {cfg.prompt.max_length}: every {k} row is too long (--overflow drop)")
        encoded[k], overflow[k] = enc.rows, {"dropped": enc.dropped, "truncated": enc.truncated}
    frozen = make_frozen(family.head_params(model.params, cfg.model.zero_lm_head_bias), verbalizer_C, cfg.model.dtype)
    return Harness(cfg, task, model, Backbone(family, model.config, layout), verbalizer_C, frozen, encoded, overflow,
                   demo_draw=demo_draw)


def choose_demos(cfg: Config, task: tasks_lib.Task, train: list, model: LoadedModel, log: Callable = print):
    """(task with its demonstrations, the training rows left, the draw kept) for --demos / --demo-draws: of
    M draws (demos.with_demos), the one whose template at z = 0 has the lowest training loss on its own rows
    left (`score_draws`); M = 1: draw 0 without scoring. --demo-none: the task's template without
    demonstrations, on every training row, is one more candidate (kept as draw -1 when its loss is lowest)."""
    p = cfg.prompt
    if p.demo_draws == 1 and not p.demo_none:
        return (*demos_lib.with_demos(task, train, p.demos, cfg.run.seed_of("split"), draw=0), 0)
    draws, losses, _ = score_draws(cfg, task, {"train": train}, model)
    best = kept_draw(losses)
    log(f"--demo-draws {p.demo_draws}: kept draw {best} (training loss at z = 0 {losses[best]:.4f}; "
        f"draws {min(losses):.4f}-{max(losses):.4f}, draw 0 {losses[0]:.4f})")
    if p.demo_none:
        plain, loss, _ = score_without_demos(cfg, task, {"train": train}, model)
        keep = kept_draw(losses, loss) == -1
        log(f"--demo-none: the template without demonstrations, training loss at z = 0 {loss:.4f} on all "
            f"{len(train)} training rows: {'kept (no demonstrations)' if keep else f'draw {best} kept'}")
        if keep:
            return plain, train, -1
    return (*draws[best], best)


def kept_draw(losses, loss_without: float | None = None) -> int:
    """choose_demos' rule: the draw with the lowest training loss at z = 0 (the first on a tie), or -1 (no
    demonstrations, --demo-none) when the template without them has a strictly lower loss than that draw."""
    best = int(np.argmin(losses))
    return -1 if loss_without is not None and loss_without < losses[best] else best


def score_without_demos(cfg: Config, task: tasks_lib.Task, splits: dict, model: LoadedModel,
                        also: Callable | None = None) -> tuple[tasks_lib.Task, float, object]:
    """(the task without demonstrations, its training loss at z = 0 on every row of `splits["train"]`,
    `also(harness)`): --demo-none's candidate, scored as `score_draws` scores a draw."""
    h = assemble(cfg, demos_lib.without_demos(task), splits, model)
    loss = float(_start_loss(h.problem("train"), h.start))
    return h.task, loss, also(h) if also is not None else None


def score_draws(cfg: Config, task: tasks_lib.Task, splits: dict, model: LoadedModel,
                also: Callable | None = None) -> tuple[list, list, list]:
    """(draws, training loss at z = 0 of each, `also(harness)` of each): the --demo-draws M draws of --demos K
    from `splits["train"]` (the other splits ride along, e.g. dev for a probe), each scored on the training
    rows it leaves. All draws are padded to one shape and share one backbone (the layout differs only in the
    template text) and one projection (p0: the same cue): one compiled call. A draw's input cache goes with its
    harness after scoring (one at a time in memory). A draw is a pass over the training rows without an input
    cache to share (one call of the budget's unit, several search calls' time)."""
    p, seed = cfg.prompt, cfg.run.seed_of("split")
    draws = [demos_lib.with_demos(task, splits["train"], p.demos, seed, draw=i) for i in range(p.demo_draws)]
    hs = [assemble(cfg, t, {**splits, "train": left}, model) for t, left in draws]
    lengths = tuple(max(col) for col in zip(*(tasks_lib.bucket_lengths(h.buckets("train")) for h in hs), strict=True))
    first, losses, extra = hs[0], [], []
    for i in range(len(hs)):
        h, hs[i] = dataclasses.replace(hs[i], backbone=first.backbone, _fitness={}), None
        losses.append(_start_loss(h.problem("train", projection=first.projection, lengths=lengths), first.start))
        if also is not None:
            extra.append(also(h))
    return draws, jax.device_get(losses), extra


_start_loss = jax.jit(lambda problem, z: problem(z[None])[0][0])
