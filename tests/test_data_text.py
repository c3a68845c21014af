"""Text featurizers: the offline hashed one, and the BERT one's errors when it cannot run."""

import os
import subprocess
import sys

import numpy as np
import pytest

from codaar.data import HashedTextFeaturizer, make_text_featurizer, prompt_table
from codaar.data.text import BertTextFeaturizer


def test_hashed_shape_padding_and_truncation():
    featurizer = HashedTextFeaturizer(dim=32, max_tokens=10)
    short = featurizer("A dog barks")
    assert short.shape == (10, 32) and short.dtype == np.float32
    assert np.abs(short[:3]).sum(1).min() > 0 and not short[3:].any()  # zero-padded after 3 words
    long = featurizer(" ".join(f"word{i}" for i in range(15)))
    assert np.abs(long).sum(1).min() > 0  # truncated to the first 10 words, all filled
    assert not featurizer("").any()


def test_hashed_is_deterministic_across_processes():
    # Python's str hash is salted per process; the featurizer must not depend on it.
    code = ("from codaar.data import HashedTextFeaturizer as H; import hashlib;"
            "print(hashlib.sha256(H(dim=16, seed=5)('The sound of a train horn').tobytes()).hexdigest())")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout}
    import hashlib

    local = hashlib.sha256(HashedTextFeaturizer(dim=16, seed=5)("The sound of a train horn").tobytes()).hexdigest()
    assert digests == {local + "\n"}


def test_hashed_positions_context_and_seed_matter():
    featurizer = HashedTextFeaturizer(dim=64)
    a, b = featurizer("dog barks loudly"), featurizer("loudly barks dog")
    assert not np.allclose(a[0], b[2])  # same word, other position and context
    assert np.corrcoef(a[0], b[2])[0, 1] > 0.5  # but still clearly the same word
    assert not np.allclose(featurizer("dog"), HashedTextFeaturizer(dim=64, seed=1)("dog"))
    table = prompt_table(["a dog barks", "a bell rings"], featurizer)
    assert table.shape == (2, 10, 64) and not np.allclose(table[0], table[1])


def test_bert_without_transformers_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    (tmp_path / "config.json").write_text("{}")  # a model folder is there; the package is not
    with pytest.raises(RuntimeError, match="transformers"):
        BertTextFeaturizer(tmp_path)


def test_bert_needs_a_local_model(tmp_path):
    # the folder is checked first, so this holds with or without transformers installed
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        BertTextFeaturizer(tmp_path / "no-model")


def test_make_text_featurizer():
    assert make_text_featurizer("hashed", dim=8).describe()["dim"] == 8
    with pytest.raises(ValueError, match="bert-path"):
        make_text_featurizer("bert")
    with pytest.raises(ValueError, match="unknown text featurizer"):
        make_text_featurizer("word2vec")
