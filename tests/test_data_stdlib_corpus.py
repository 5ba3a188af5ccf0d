"""The offline demo corpus: megabytes of English docstrings, fast, deterministic, splits that never overlap."""

import json
import time

from moderngpt2.data.stdlib_corpus import build_stdlib_corpus, hash_fraction


def test_stdlib_corpus_is_big_fast_deterministic_and_split_without_overlap(tmp_path):
    start = time.perf_counter()
    train, validation = build_stdlib_corpus(str(tmp_path / "a"), validation_fraction=0.05, seed=0, progress=False)
    assert time.perf_counter() - start < 30
    train_texts = [json.loads(line)["text"] for line in open(train, encoding="utf-8")]
    validation_texts = [json.loads(line)["text"] for line in open(validation, encoding="utf-8")]
    size = sum(len(t.encode()) for t in train_texts + validation_texts)
    assert size > 1_500_000 and len(train_texts) > 3000
    assert set(train_texts).isdisjoint(validation_texts) and len(set(train_texts)) == len(train_texts)
    assert 0.03 < len(validation_texts) / (len(train_texts) + len(validation_texts)) < 0.07
    assert all(hash_fraction(t, 0) < 0.05 for t in validation_texts)
    assert all(len(t) >= 60 for t in train_texts)
    assert any("Return" in t for t in train_texts)  # English prose, e.g. "Return the ..." docstrings
    again = build_stdlib_corpus(str(tmp_path / "b"), validation_fraction=0.05, seed=0, progress=False)
    assert open(again[0], "rb").read() == open(train, "rb").read()
    assert open(again[1], "rb").read() == open(validation, "rb").read()
    reseeded = {t for t in train_texts + validation_texts if hash_fraction(t, 1) < 0.05}
    assert reseeded != set(validation_texts)
