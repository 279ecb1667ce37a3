"""Reading the JSONL splits, and every bad-input error names file and line."""

import pytest

from bbt_jax.data import check_train_split, read_jsonl, split_paths
from bbt_jax.errors import UserError


def _write(tmp_path, text, name="train.jsonl"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_reads_real_split(data_dir):
    rows = read_jsonl(split_paths(data_dir, "mrpc", 16, 13)["train"], 2, pair=True)
    assert len(rows) == 32 and all(r.text_pair for r in rows)
    assert sorted({r.label for r in rows}) == [0, 1]


def test_malformed_json_names_file_and_line(tmp_path):
    p = _write(tmp_path, '{"text": "a", "text_pair": null, "label": 0}\n{"text": "b", \n')
    with pytest.raises(UserError, match=r"train.jsonl:2: malformed JSON"):
        read_jsonl(p, 2, pair=False)


def test_label_out_of_range(tmp_path):
    p = _write(tmp_path, '{"text": "a", "text_pair": null, "label": 2}\n')
    with pytest.raises(UserError, match=r"train.jsonl:1: label 2 out of range \[0, 2\)"):
        read_jsonl(p, 2, pair=False)


@pytest.mark.parametrize("line,msg", [
    ('{"text": 3, "label": 0}', "'text' must be a string"),
    ('{"text": "a", "label": "pos"}', "'label' must be an integer"),
    ('[1, 2]', "expected a JSON object"),
])
def test_bad_fields(tmp_path, line, msg):
    with pytest.raises(UserError, match=msg):
        read_jsonl(_write(tmp_path, line + "\n"), 2, pair=False)


def test_pair_task_needs_text_pair(tmp_path):
    with pytest.raises(UserError, match="text_pair"):
        read_jsonl(_write(tmp_path, '{"text": "a", "text_pair": null, "label": 0}\n'), 2, pair=True)


def test_missing_file_and_dir(tmp_path):
    with pytest.raises(UserError, match="data file not found"):
        read_jsonl(tmp_path / "nope.jsonl", 2, pair=False)
    with pytest.raises(UserError, match="no such directory"):
        split_paths(tmp_path / "absent", "sst2", 16, 13)


def test_empty_and_one_class_train(tmp_path):
    p = tmp_path / "train.jsonl"
    with pytest.raises(UserError, match="empty"):
        check_train_split([], p, 2)
    rows = read_jsonl(_write(tmp_path, '{"text": "a", "label": 1}\n{"text": "b", "label": 1}\n'), 2, pair=False)
    with pytest.raises(UserError, match="single class"):
        check_train_split(rows, p, 2)


@pytest.mark.parametrize("task,n_train,n_dev,pair", [("sst2", 32, 32, False), ("snli", 48, 48, True),
                                                     ("dbpedia", 224, 224, False)])
def test_bbt_seed42_split_reads_real_data(data_dir, task, n_train, n_dev, pair):
    import json
    labels = json.loads((data_dir / "labels.json").read_text())[task]
    paths = split_paths(data_dir, task, 16, 42, split="bbt-seed42")
    assert paths["train"] == data_dir / task / "bbt-seed42" / "train.jsonl"
    assert paths["dev"] == data_dir / task / "bbt-seed42" / "dev.jsonl"
    assert paths["test"] == data_dir / task / "test.jsonl"
    train = read_jsonl(paths["train"], len(labels), pair=pair)
    dev = read_jsonl(paths["dev"], len(labels), pair=pair)
    assert (len(train), len(dev)) == (n_train, n_dev)
    # a different split from the LM-BFF seed-42 one (BBT-RGB's paper-aligned rows)
    kshot = read_jsonl(split_paths(data_dir, task, 16, 42)["train"], len(labels), pair=pair)
    assert {r.text for r in train} != {r.text for r in kshot}
    # the data seed is fixed: any search seed reads the same folder
    assert split_paths(data_dir, task, 16, 13, split="bbt-seed42") == paths


def test_split_selection_errors(data_dir, tmp_path):
    with pytest.raises(UserError, match=r"sst2/k-shot/16-7: no such split folder"):
        split_paths(data_dir, "sst2", 16, 7)
    (tmp_path / "sst2" / "k-shot" / "16-13").mkdir(parents=True)
    with pytest.raises(UserError, match=r"sst2/bbt-seed42: no such split folder \(--split bbt-seed42"):
        split_paths(tmp_path, "sst2", 16, 42, split="bbt-seed42")
    with pytest.raises(UserError, match="16-shot"):
        split_paths(data_dir, "sst2", 8, 42, split="bbt-seed42")
    with pytest.raises(UserError, match="choose from k-shot, bbt-seed42"):
        split_paths(data_dir, "sst2", 16, 42, split="bbt")
