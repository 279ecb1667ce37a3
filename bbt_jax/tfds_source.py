"""Task rows from TensorFlow Datasets (`--data-source tfds`; extra `[tfds]`; TensorFlow is not needed).

`--tfds-name` is one of two kinds:

* a catalog dataset (`CATALOG`: glue/sst2, yelp_polarity_reviews, ag_news_subset, huggingface:dbpedia_14,
  glue/mrpc, snli, glue/rte). The k-shot train/dev rows are sampled from its train split by the split seed
  (`kshot_indices`: LM-BFF's tools/generate_k_shot_data.py procedure, by which the shipped k-shot JSONL
  splits were made); test is its full labelled evaluation split. An unprepared dataset is downloaded (when
  online) and stored as array_record.
* `bbt_jax_fewshot` or `bbt_jax_fewshot/<config>`: `BbtJaxFewshot`, a tfds builder over the shipped JSONL
  (configs `<task>-<k>-<seed>` and `<task>-bbt-seed42`; splits train, dev, test), prepared from --data-dir on
  first use. Its rows equal those of `--data-source jsonl`.

Catalog rows equal the shipped ones only where the tfds train split keeps the source file's order: the GLUE
builders (sst2, mrpc, rte) store it as `idx`, and the sampler reproduces LM-BFF's RTE splits exactly from
GLUE's RTE train.tsv (all five seeds). The other builders store their rows in tfds's own (hashed,
deterministic) order, so their samples are balanced and reproducible but not the shipped rows; the shipped
yelpp and dbpedia splits came from RLPrompt's copies, which also order labels differently.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import io
import logging
from pathlib import Path

import numpy as np

from bbt_jax import data as data_lib
from bbt_jax.errors import UserError

FEWSHOT = "bbt_jax_fewshot"
FEWSHOT_SEEDS = (13, 21, 42, 87, 100)
INSTALL = 'pip install -e ".[tfds]"'


@dataclasses.dataclass(frozen=True)
class Source:
    """How one task reads from a catalog dataset: the features that make `text` (joined by a space) and
    `text_pair`, the dataset's label names in our id order, and its labelled evaluation split."""

    name: str
    text: tuple[str, ...]
    pair: str | None
    labels: tuple[str, ...]
    test: str
    csv_quotes: bool = False  # tfds's yelp builder keeps the CSV's doubled quotes ("")


CATALOG: dict[str, Source] = {
    "sst2": Source("glue/sst2", ("sentence",), None, ("negative", "positive"), "validation"),
    "yelpp": Source("yelp_polarity_reviews", ("text",), None, ("1", "2"), "test", csv_quotes=True),
    "agnews": Source("ag_news_subset", ("title", "description"), None, ("World", "Sports", "Business", "Sci/Tech"),
                     "test"),
    # Not in the tfds catalog: tfds's Hugging Face bridge (needs `datasets`), the same ids as ours.
    "dbpedia": Source("huggingface:dbpedia_14", ("content",), None,
                      ("Company", "EducationalInstitution", "Artist", "Athlete", "OfficeHolder", "MeanOfTransportation",
                       "Building", "NaturalPlace", "Village", "Animal", "Plant", "Album", "Film", "WrittenWork"),
                      "test"),
    "mrpc": Source("glue/mrpc", ("sentence1",), "sentence2", ("not_equivalent", "equivalent"), "validation"),
    "snli": Source("snli", ("premise",), "hypothesis", ("entailment", "neutral", "contradiction"), "test"),
    "rte": Source("glue/rte", ("sentence1",), "sentence2", ("entailment", "not_entailment"), "validation"),
}


def kshot_indices(labels_B, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of a k-shot train and dev split (k per class each, disjoint), as LM-BFF sampled them:
    shuffle the rows with numpy's legacy RNG seeded by `seed`, group them by label in order of first
    appearance, take each label's first k rows for train and the next k for dev."""
    labels_B = np.asarray(labels_B)
    order_B = np.arange(labels_B.shape[0])
    np.random.RandomState(seed).shuffle(order_B)
    groups: dict = {}
    for i in order_B:
        groups.setdefault(labels_B[i].item(), []).append(i)
    short = {lab: len(g) for lab, g in groups.items() if len(g) < 2 * k}
    if short:
        raise UserError(f"--k-shot {k}: needs {2 * k} rows per class (train + dev), but classes {short} have fewer")
    train = [i for g in groups.values() for i in g[:k]]
    dev = [i for g in groups.values() for i in g[k:2 * k]]
    return np.asarray(train, np.int64), np.asarray(dev, np.int64)


def fewshot_config(task: str, k_shot: int, seed: int, split: str) -> str:
    """The BbtJaxFewshot config of a run's split: `<task>-<k>-<seed>` or `<task>-bbt-seed42`."""
    return f"{task}-bbt-seed42" if split == "bbt-seed42" else f"{task}-{k_shot}-{seed}"


def resolve(task: str, tfds_name: str, k_shot: int, seed: int, split: str) -> str:
    """The full tfds name a run reads (checked against its task and split); no tfds import."""
    source = CATALOG[task]
    if tfds_name == FEWSHOT or tfds_name.startswith(FEWSHOT + "/"):
        want = f"{FEWSHOT}/{fewshot_config(task, k_shot, seed, split)}"
        if tfds_name not in (FEWSHOT, want):
            raise UserError(f"--tfds-name {tfds_name}: this run's --task/--k-shot/--seed/--split select {want}")
        return want
    name = tfds_name or source.name
    if name != source.name and not name.startswith(source.name + ":"):  # a version suffix is fine
        raise UserError(f"--tfds-name {tfds_name}: --task {task} reads {source.name} or {FEWSHOT} (the shipped JSONL)")
    if split != "k-shot":
        raise UserError(f"--split {split}: a catalog dataset is sampled by seed (k-shot); the paper's split is "
                        f"--tfds-name {FEWSHOT}")
    return name


@contextlib.contextmanager
def _quiet():
    """Silence tfds's prints, progress bars and absl warnings (e.g. a not yet prepared folder)."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        absl.setLevel(level)


def _tfds():
    """tensorflow_datasets, imported quietly (without TensorFlow it prints a banner and a traceback)."""
    if importlib.util.find_spec("tensorflow_datasets") is None:
        raise UserError(f"--data-source tfds: needs tensorflow-datasets; {INSTALL}")
    try:
        with _quiet():
            import tensorflow_datasets as tfds
            import tensorflow_datasets.text  # noqa: F401  registers glue and yelp when the full import stops early
    except ImportError as e:
        raise UserError(f"--data-source tfds: tensorflow-datasets does not import ({e}); {INSTALL}") from None
    return tfds


@functools.cache
def builder_class():
    """BbtJaxFewshot, defined (and so registered with tfds) on first use."""
    tfds = _tfds()
    from bbt_jax.tasks import TASKS

    class BbtJaxFewshot(tfds.core.GeneratorBasedBuilder):
        """The shipped few-shot JSONL (../shared/data) as a tfds dataset; manual_dir = that folder."""

        VERSION = tfds.core.Version("1.0.0")
        BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=fewshot_config(t, 16, s, "k-shot"))
                           for t in TASKS for s in FEWSHOT_SEEDS] + [
            tfds.core.BuilderConfig(name=fewshot_config(t, 16, 0, "bbt-seed42")) for t in TASKS]
        MANUAL_DOWNLOAD_INSTRUCTIONS = "manual_dir: the folder of <task>/k-shot/<k>-<seed>/*.jsonl (../shared/data)"

        @property
        def task(self):
            return TASKS[self.builder_config.name.split("-")[0]]

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self, description="bbt-jax few-shot splits (train, dev) and test set, from JSONL",
                features=tfds.features.FeaturesDict({
                    "text": tfds.features.Text(), "text_pair": tfds.features.Text(),
                    "label": tfds.features.ClassLabel(names=list(self.task.labels)), "idx": np.int64}),
                disable_shuffling=True)

        def _split_generators(self, dl_manager):
            _, _, rest = self.builder_config.name.partition("-")
            split, k, seed = ("bbt-seed42", 16, 0) if rest == "bbt-seed42" else ("k-shot", *map(int, rest.split("-")))
            paths = data_lib.split_paths(Path(dl_manager.manual_dir), self.task.name, k, seed, split=split)
            return {name: self._generate_examples(path) for name, path in paths.items()}

        def _generate_examples(self, path):
            for i, r in enumerate(data_lib.read_jsonl(path, len(self.task.labels), pair=self.task.pair)):
                yield i, {"text": r.text, "text_pair": r.text_pair or "", "label": r.label, "idx": i}

    return BbtJaxFewshot


def __getattr__(name):  # `from bbt_jax.tfds_source import BbtJaxFewshot` (needs tfds)
    if name == "BbtJaxFewshot":
        return builder_class()
    raise AttributeError(name)


def fewshot_builder(config: str, *, data_dir: str | None, jsonl_dir: str | Path):
    """The BbtJaxFewshot builder of one config, prepared from `jsonl_dir` (the shipped JSONL) if needed."""
    tfds = _tfds()
    cls = builder_class()
    cfg = cls.builder_configs.get(config) or tfds.core.BuilderConfig(name=config)  # other k / seeds: own data
    with _quiet():
        b = cls(config=cfg, data_dir=data_dir or None, file_format="array_record")
        prepared = b.is_prepared()
    if not prepared:
        if not Path(jsonl_dir).is_dir():
            raise UserError(f"--data-dir {jsonl_dir}: no such directory (the JSONL that {FEWSHOT} is prepared from)")
        with _quiet():
            b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(jsonl_dir)))
    return b


def _catalog_builder(name: str, data_dir: str | None):
    tfds = _tfds()
    where = data_dir or "the tfds default data dir (TFDS_DATA_DIR or ~/tensorflow_datasets)"
    try:
        with _quiet():
            b = tfds.builder(name, data_dir=data_dir or None)
            prepared = b.is_prepared()
        if not prepared:
            with _quiet():
                b = tfds.builder(name, data_dir=data_dir or None, file_format="array_record")
            b.download_and_prepare()  # online: tfds's progress bars stay visible
    except Exception as e:  # noqa: BLE001 (network, registry and builder errors alike)
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise UserError(f"--tfds-name {name}: not prepared in {where} and not downloadable here "
                        f"({type(e).__name__}: {msg}); pass --tfds-data-dir") from None
    return b


def _records(b, split: str) -> list[dict]:
    """Every example of a split as numpy dicts, in source order where the builder keeps an `idx`."""
    if split not in b.info.splits:
        raise UserError(f"--tfds-name {b.info.full_name}: has no {split!r} split (has {', '.join(b.info.splits)})")
    fmt = getattr(b.info.file_format, "value", b.info.file_format)
    if fmt == "array_record":
        source = b.as_data_source(split=split)
        rows = [r for start in range(0, len(source), 4096)
                for r in source.__getitems__(list(range(start, min(start + 4096, len(source)))))]
    else:
        try:
            import tensorflow  # noqa: F401
        except ImportError:
            raise UserError(f"--tfds-name {b.info.full_name}: stored as {fmt}, which needs tensorflow to read "
                            "(pip install tensorflow-cpu), or prepare it again as array_record") from None
        rows = list(_tfds().as_numpy(b.as_dataset(split=split, shuffle_files=False)))
    if rows and "idx" in rows[0]:
        rows.sort(key=lambda r: int(r["idx"]))
    return rows


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _catalog_rows(b, split: str, source: Source, pair: bool) -> list[data_lib.Example]:
    names = tuple(b.info.features["label"].names)
    if names != source.labels:
        raise UserError(f"--tfds-name {b.info.full_name}: label names {names}, expected {source.labels}")
    out = []
    for r in _records(b, split):
        label = int(r["label"])
        if label < 0:  # unlabelled (snli's '-', GLUE test)
            continue
        text = " ".join(_text(r[f]).strip() for f in source.text).strip()
        if source.csv_quotes:
            text = text.replace('""', '"')
        out.append(data_lib.Example(text, _text(r[source.pair]).strip() if pair else None, label))
    return out


def read_splits(run, task) -> tuple[dict[str, list[data_lib.Example]], dict[str, str]]:
    """train/dev/test rows of a run (`RunConfig`) from tfds, and a name for each split in messages."""
    name = resolve(task.name, run.tfds_name, run.k_shot, run.seed_of("split"), run.split)
    if name.startswith(FEWSHOT + "/"):
        b = fewshot_builder(name.split("/", 1)[1], data_dir=run.tfds_data_dir, jsonl_dir=run.data_dir)
        splits = {}
        for split in ("train", "dev", "test"):
            splits[split] = [data_lib.Example(_text(r["text"]), _text(r["text_pair"]) if task.pair else None,
                                              int(r["label"])) for r in _records(b, split)]
    else:
        source = CATALOG[task.name]
        b = _catalog_builder(name, run.tfds_data_dir)
        train = _catalog_rows(b, "train", source, task.pair)
        train_idx, dev_idx = kshot_indices([r.label for r in train], run.k_shot, run.seed_of("split"))
        splits = {"train": [train[i] for i in train_idx], "dev": [train[i] for i in dev_idx],
                  "test": _catalog_rows(b, source.test, source, task.pair)}
    return splits, {k: f"tfds {name} ({k})" for k in splits}
