"""tfds as a data source (bbt_jax/tfds_source.py): the shipped JSONL read back through the BbtJaxFewshot builder
equals data.read_jsonl's rows; a `--data-source tfds` run gets the jsonl run's harness rows; LM-BFF's k-shot
sampling; a catalog dataset (a local stand-in, no download) sampled by seed; one-line errors. Tests that need
tensorflow-datasets (extra [tfds]) skip without it."""

import importlib.util

import numpy as np
import pytest

from bbt_jax import cli
from bbt_jax import config as C
from bbt_jax import data as data_lib
from bbt_jax import tfds_source as ts
from bbt_jax.errors import UserError
from bbt_jax.harness import build, read_splits
from bbt_jax.tasks import get_task
from tests.conftest import ROBERTA_TOKENIZER

needs_tfds = pytest.mark.skipif(importlib.util.find_spec("tensorflow_datasets") is None,
                                reason='tensorflow-datasets is not installed (pip install -e ".[tfds]")')
CONFIGS = ("sst2-16-13", "rte-16-21")


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory, data_dir):
    """A tfds data dir holding bbt_jax_fewshot/{sst2-16-13, rte-16-21}, prepared from the shipped JSONL."""
    d = tmp_path_factory.mktemp("tfds")
    for config in CONFIGS:
        ts.fewshot_builder(config, data_dir=str(d), jsonl_dir=data_dir)
    return d


def run_cfg(data_dir, **over):
    return C.override(C.tiny(), data_dir=str(data_dir), **over)


@needs_tfds
@pytest.mark.parametrize("config", CONFIGS)
def test_builder_reads_back_the_shipped_rows(tfds_dir, data_dir, config):
    """Plain tfds (`tfds.data_source`, no TensorFlow) reads the shipped splits: texts, labels and order."""
    import tensorflow_datasets as tfds

    task_name, k, seed = config.split("-")
    task = get_task(task_name)
    paths = data_lib.split_paths(data_dir, task.name, int(k), int(seed))
    sources = tfds.data_source(f"{ts.FEWSHOT}/{config}", data_dir=str(tfds_dir))
    assert set(sources) == {"train", "dev", "test"}
    for split, path in paths.items():
        got = [data_lib.Example(r["text"].decode(), r["text_pair"].decode() if task.pair else None, int(r["label"]))
               for r in sources[split]]
        assert got == data_lib.read_jsonl(path, task.num_labels, pair=task.pair)


@needs_tfds
def test_tfds_run_gets_the_jsonl_rows(tfds_dir, data_dir):
    jsonl = build(run_cfg(data_dir), default_tokenizer=ROBERTA_TOKENIZER, log=lambda s: None)
    cfg = run_cfg(data_dir, data_source="tfds", tfds_name=ts.FEWSHOT, tfds_data_dir=str(tfds_dir))
    h = build(cfg, default_tokenizer=ROBERTA_TOKENIZER, model=jsonl.model, log=lambda s: None)
    assert read_splits(cfg, h.task) == read_splits(jsonl.cfg, h.task)
    assert h.encoded == jsonl.encoded  # the token rows every method sees
    eff = h.effective()
    assert eff["data_source"] == "tfds" and eff["tfds_name"] == f"{ts.FEWSHOT}/sst2-16-13"
    assert jsonl.effective()["tfds_name"] is None


def reference_kshot(labels, k, seed):
    """LM-BFF's procedure on a list of rows, as its script shuffles the lines themselves."""
    rows = list(enumerate(labels))
    np.random.seed(seed)
    np.random.shuffle(rows)
    groups = {}
    for i, lab in rows:
        groups.setdefault(lab, []).append(i)
    return [i for g in groups.values() for i in g[:k]], [i for g in groups.values() for i in g[k:2 * k]]


def test_kshot_sampling_is_lm_bff_balanced_disjoint_and_seeded():
    labels_B = np.random.default_rng(0).permutation(np.repeat([0, 1, 2], [50, 70, 40]))
    train, dev = ts.kshot_indices(labels_B, 16, 13)
    assert (train.tolist(), dev.tolist()) == reference_kshot(labels_B.tolist(), 16, 13)
    for idx in (train, dev):
        assert sorted(np.bincount(labels_B[idx]).tolist()) == [16, 16, 16]
        blocks = [set(labels_B[idx[i * 16:(i + 1) * 16]].tolist()) for i in range(3)]
        assert all(len(b) == 1 for b in blocks) and len(set.union(*blocks)) == 3  # grouped by label
    assert not set(train.tolist()) & set(dev.tolist())
    again = ts.kshot_indices(labels_B, 16, 13)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], dev)
    assert not np.array_equal(ts.kshot_indices(labels_B, 16, 21)[0], train)
    with pytest.raises(UserError, match=r"--k-shot 21: needs 42 rows per class"):
        ts.kshot_indices(labels_B, 21, 13)


@pytest.fixture(scope="module")
def catalog_dir(tmp_path_factory):
    """A GLUE-like stand-in (sentence, label, idx; unlabelled rows as -1) prepared locally: no download."""
    tfds = pytest.importorskip("tensorflow_datasets")

    class BbtJaxTestGlue(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "sentence": tfds.features.Text(), "idx": np.int32,
                "label": tfds.features.ClassLabel(names=["negative", "positive"])}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(120, 0), "validation": self._generate_examples(10, 3)}

        def _generate_examples(self, n, unlabelled):
            for i in range(n):
                yield i, {"sentence": f"row {i} ", "label": -1 if i < unlabelled else (i * 7) % 3 % 2, "idx": i}

    d = tmp_path_factory.mktemp("catalog")
    with ts._quiet():
        BbtJaxTestGlue(data_dir=str(d), file_format="array_record").download_and_prepare()
    return d


@needs_tfds
def test_catalog_dataset_is_sampled_by_seed(catalog_dir, data_dir, monkeypatch):
    monkeypatch.setitem(ts.CATALOG, "sst2", ts.Source("bbt_jax_test_glue", ("sentence",), None,
                                                      ("negative", "positive"), "validation"))
    cfg = run_cfg(data_dir, data_source="tfds", tfds_data_dir=str(catalog_dir), k_shot=4, seed=21)
    splits = read_splits(cfg, get_task("sst2"))
    labels = [(i * 7) % 3 % 2 for i in range(120)]  # in source (idx) order, though tfds stores them shuffled
    train, dev = ts.kshot_indices(labels, 4, 21)
    assert splits["train"] == [data_lib.Example(f"row {i}", None, labels[i]) for i in train]
    assert splits["dev"] == [data_lib.Example(f"row {i}", None, labels[i]) for i in dev]
    assert [r.text for r in splits["test"]] == [f"row {i}" for i in range(3, 10)]  # label -1 dropped
    other = read_splits(C.override(cfg, seed=13), get_task("sst2"))
    assert other["train"] != splits["train"] and other["test"] == splits["test"]


def one_line_error(match, fn, *a, **kw):
    with pytest.raises(UserError, match=match) as e:
        fn(*a, **kw)
    assert "\n" not in str(e.value)


def test_bad_flags_are_one_line_errors(data_dir):
    one_line_error(r"--data-source csv: choose from jsonl, tfds", run_cfg, data_dir, data_source="csv")
    one_line_error(r"--tfds-name glue/rte: --task sst2 reads glue/sst2 or bbt_jax_fewshot", run_cfg, data_dir,
                   data_source="tfds", tfds_name="glue/rte")
    one_line_error(r"--tfds-name bbt_jax_fewshot/sst2-16-21: .* select bbt_jax_fewshot/sst2-16-13", run_cfg,
                   data_dir, data_source="tfds", tfds_name="bbt_jax_fewshot/sst2-16-21")
    one_line_error(r"--split bbt-seed42: a catalog dataset", run_cfg, data_dir, data_source="tfds",
                   split="bbt-seed42")
    ok = run_cfg(data_dir, data_source="tfds", tfds_name="glue/sst2:2.0.0", split_seed=21)  # a version is fine
    assert ok.run.tfds_name == "glue/sst2:2.0.0"
    assert [ts.resolve(t, "", 16, 13, "k-shot") for t in ("dbpedia", "snli")] == ["huggingface:dbpedia_14", "snli"]
    args = cli.build_parser().parse_args(["train", "--preset", "tiny", "--data-source", "tfds", "--tfds-name",
                                          "bbt_jax_fewshot", "--tfds-data-dir", "/x"])
    run = cli.resolve_config(args).run
    assert (run.data_source, run.tfds_name, run.tfds_data_dir) == ("tfds", "bbt_jax_fewshot", "/x")


def test_missing_tfds_says_how_to_install(data_dir, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorflow_datasets" else find_spec(name, *a))
    cfg = run_cfg(data_dir, data_source="tfds")
    one_line_error(r'--data-source tfds: needs tensorflow-datasets; pip install -e "\.\[tfds\]"', read_splits, cfg,
                   get_task("sst2"))


@needs_tfds
def test_missing_dataset_names_the_flag_and_data_dir(data_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(ts.CATALOG, "sst2", ts.Source("bbt_jax_no_such_dataset", ("sentence",), None,
                                                      ("negative", "positive"), "validation"))
    cfg = run_cfg(data_dir, data_source="tfds", tfds_data_dir=str(tmp_path))
    one_line_error(rf"--tfds-name bbt_jax_no_such_dataset: not prepared in {tmp_path} and not downloadable",
                   read_splits, cfg, get_task("sst2"))
    cfg = run_cfg(tmp_path / "none", data_source="tfds", tfds_name=ts.FEWSHOT, tfds_data_dir=str(tmp_path))
    one_line_error(r"--data-dir .*none: no such directory", read_splits, cfg, get_task("sst2"))
