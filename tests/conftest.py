"""Strict JAX settings for every test (equinox tests/conftest.py)."""

from pathlib import Path

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DATA_DIR = SHARED / "data"
ROBERTA_TOKENIZER = SHARED / "models" / "roberta-tokenizer" / "tokenizer.json"


@pytest.fixture(scope="session")
def roberta_tokenizer():
    from tokenizers import Tokenizer

    if not ROBERTA_TOKENIZER.is_file():
        pytest.skip("../shared/models/roberta-tokenizer is missing")
    return Tokenizer.from_file(str(ROBERTA_TOKENIZER))


@pytest.fixture(scope="session")
def data_dir():
    if not DATA_DIR.is_dir():
        pytest.skip("../shared/data is missing")
    return DATA_DIR
