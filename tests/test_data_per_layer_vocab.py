"""per-layer-vocab: each strategy against an independent count of the corpus, the file format, the model's
default map, and the aligned per-layer stream beside pretokenized data."""

import json
import math
import random
from collections import Counter

import numpy as np
import pytest
import torch

from moderngpt2 import ModernGPT2Config, ModernGPT2ForCausalLM, cli
from moderngpt2.data.loader import load_block_dataset
from moderngpt2.data.per_layer_vocab import load_per_layer_vocab, token_surfaces
from moderngpt2.errors import UserError
from moderngpt2.tokenization import load_tokenizer, save_tokenizer, train_tokenizer

V_P = 30
RESERVED = ["<|startoftext|>", "<|endoftext|>", "<|layer_start|>", "<|attention|>", "<unk>"]
SUBJECTS = ["The cat", "A dog", "My sister", "The old farmer", "Our teacher", "A small bird"]
VERBS = ["sees", "finds", "carries", "paints", "follows", "remembers"]
OBJECTS = ["the red ball", "a wooden chair", "the river", "an apple (green)", "the long road", "a quiet song"]


def make_documents(count, seed=0):
    rng = random.Random(seed)
    docs = []
    for _ in range(count):
        sentences = [f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}{rng.choice('.!?')}"
                     for _ in range(rng.randint(1, 4))]
        docs.append((" " if rng.random() < 0.7 else "\n").join(sentences))
    return docs


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("plv")
    docs = make_documents(200)
    save_tokenizer(train_tokenizer(make_documents(300, seed=5), vocab_size=330, progress=False), str(root / "tok"))
    with open(root / "corpus.jsonl", "w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps({"text": doc}) + "\n")
    return root, docs, load_tokenizer(str(root / "tok"))


def independent_counts(tokenizer, docs):
    """tf, df and sentence starts by plain Python, documents followed by EOS as in the pipeline."""
    surfaces = token_surfaces(tokenizer)
    tf, df, ss = Counter(), Counter(), Counter()
    for doc in docs:
        ids = tokenizer.encode(doc, add_special_tokens=False) + [tokenizer.eos_token_id]
        tf.update(ids)
        df.update(set(ids))
        ss[ids[0]] += 1
        for previous, current in zip(ids, ids[1:]):
            if "\n" in surfaces[previous] or surfaces[previous].rstrip().endswith((".", "!", "?")):
                ss[current] += 1
    return tf, df, ss, surfaces


def expected_choice(strategy, tokenizer, docs):
    tf, df, ss, surfaces = independent_counts(tokenizer, docs)
    n = len(docs)
    candidates = [t for t in tf if t not in tokenizer.all_special_ids]

    def is_word(t):
        return any(ch.isalnum() for ch in surfaces[t])

    def is_cue(t):
        s = surfaces[t]
        return s.isspace() or "\n" in s or (s.strip() != "" and all(not ch.isalnum() and not ch.isspace()
                                                                       for ch in s.strip()))

    keys = {
        "frequency": lambda t: (-tf[t], t),
        "syntax_focus": lambda t: (-tf[t] * df[t] / n, -tf[t], t),
        "semantic_focus": lambda t: (not is_word(t), -(math.log1p(tf[t]) * math.log(n / df[t])) if is_word(t)
                                     else -tf[t], -tf[t], t),
        "attention_guidance": lambda t: ((0, -tf[t]) if is_cue(t) else (1, -ss[t]) if ss[t] else (2, -tf[t]),
                                         -tf[t], t),
    }
    return sorted(candidates, key=keys[strategy])[:V_P - 5], tf


def build(root, strategy, *extra):
    out = root / f"{strategy}.json"
    assert cli.main(["per-layer-vocab", "--tokenizer_path", str(root / "tok"), "--input", str(root / "corpus.jsonl"),
                     "--per-layer-vocab-size", str(V_P), "--per-layer-strategy", strategy, "--output", str(out),
                     "--no_progress", *extra]) == 0
    return load_per_layer_vocab(str(out))


@pytest.mark.parametrize("strategy", ["frequency", "syntax_focus", "semantic_focus", "attention_guidance"])
def test_ranking_strategies_match_an_independent_count(setup, strategy, capsys):
    root, docs, tokenizer = setup
    vocab = build(root, strategy)
    printed = capsys.readouterr().out
    chosen, tf = expected_choice(strategy, tokenizer, docs)
    token_map = vocab.token_map
    assert [main for main in range(len(tokenizer)) if token_map[main] >= 5] == sorted(chosen)
    assert [token_map[main] for main in chosen] == list(range(5, 5 + len(chosen)))  # ids follow the rank order
    assert token_map[tokenizer.eos_token_id] == 1 and token_map[tokenizer.unk_token_id] == 4 == vocab.unk_id
    assert list(vocab.vocab)[:5] == RESERVED and list(vocab.vocab.values())[:5] == [0, 1, 2, 3, 4]
    assert vocab.vocab[tokenizer.convert_ids_to_tokens(chosen[0])] == 5
    covered = sum(tf[t] for t in chosen) + tf[tokenizer.eos_token_id]
    assert vocab.coverage == pytest.approx(covered / sum(tf.values()), abs=1e-6)
    assert f"coverage: {100 * vocab.coverage:.2f}%" in printed
    assert vocab.tokenizer_fingerprint and vocab.main_vocab_size == len(tokenizer) and vocab.strategy == strategy


def test_strategies_differ_in_what_they_favour(setup):
    root, _, tokenizer = setup
    surfaces = token_surfaces(tokenizer)
    first = {}
    for strategy in ("syntax_focus", "semantic_focus", "attention_guidance"):
        token_map = build(root, strategy).token_map
        first[strategy] = [surfaces[m] for m in sorted(range(len(token_map)), key=lambda m: token_map[m])
                           if token_map[m] >= 5][:5]
    assert all(any(ch.isalpha() for ch in s) for s in first["semantic_focus"])
    assert all(not any(ch.isalpha() for ch in s) for s in first["attention_guidance"])


def test_random_subset_is_seeded_and_identity_is_the_models_default_map(setup):
    root, docs, tokenizer = setup
    a, b, c = build(root, "random_subset"), build(root, "random_subset"), build(root, "random_subset", "--seed", "7")
    assert a.token_map == b.token_map != c.token_map and a.seed == 0 and c.seed == 7
    seen = {t for doc in docs for t in tokenizer.encode(doc, add_special_tokens=False)}
    own = {m for m, i in enumerate(a.token_map) if i >= 5}
    assert len(own) == V_P - 5 and own <= seen
    identity = build(root, "identity")
    assert identity.token_map == [i if i < V_P else 0 for i in range(len(tokenizer))] and identity.unk_id == 0
    config = ModernGPT2Config(model_size_name="tiny", vocab_size=len(tokenizer), use_per_layer_embedding=True,
                              per_layer_vocab_size=V_P, per_layer_hidden_size=8)
    model = ModernGPT2ForCausalLM(config)
    assert model.model.per_layer_token_map.tolist() == identity.token_map
    model.set_per_layer_token_map(a.token_map)  # every strategy's map installs in the model as is
    assert torch.equal(model.model.per_layer_token_map, torch.tensor(a.token_map))


@pytest.mark.parametrize("fmt", ["parquet", "megatron"])
def test_per_layer_stream_is_aligned_with_the_main_blocks(setup, tmp_path, fmt):
    root, _, _ = setup
    out, stream = tmp_path / "data", tmp_path / "per_layer"
    assert cli.main(["pretokenize", "--tokenizer_path", str(root / "tok"), "--input", str(root / "corpus.jsonl"),
                     "--output_path", str(out), "--block_size", "8", "--max_samples_per_shard", "40", "--format", fmt,
                     "--validation_split_percentage", "20", "--no_progress"]) == 0
    assert cli.main(["per-layer-vocab", "--tokenizer_path", str(root / "tok"), "--pre_tokenized_dataset_path",
                     str(out), "--per-layer-vocab-size", str(V_P), "--per-layer-strategy", "syntax_focus",
                     "--output", str(tmp_path / "v.json"), "--per-layer-output-prefix", str(stream),
                     "--no_progress"]) == 0
    table = np.array(load_per_layer_vocab(str(tmp_path / "v.json")).token_map)
    for split in ("train", "validation"):
        dataset = load_block_dataset(str(out), split, per_layer_path=str(stream))
        assert len(dataset) > 0
        for i in range(len(dataset)):
            item = dataset[i]
            assert item["per_layer_input_ids"].dtype == torch.int64
            assert np.array_equal(item["per_layer_input_ids"].numpy(), table[item["input_ids"].numpy()])


def test_stream_and_vocab_mistakes_are_one_line_errors(setup, tmp_path, capsys):
    root, docs, _ = setup
    out = tmp_path / "data"
    cli.main(["pretokenize", "--tokenizer_path", str(root / "tok"), "--input", str(root / "corpus.jsonl"),
              "--output_path", str(out), "--block_size", "8", "--no_progress"])
    with pytest.raises(UserError, match=r"^Per-layer data file not found: .*nowhere/manifest\.json — run "
                                        r"`moderngpt2 per-layer-vocab … --per-layer-output-prefix .*nowhere` first$"):
        load_block_dataset(str(out), "train", per_layer_path=str(tmp_path / "nowhere"))
    # a tokenizer other than the data's
    save_tokenizer(train_tokenizer(docs, vocab_size=300, progress=False), str(tmp_path / "other"))
    assert cli.main(["per-layer-vocab", "--tokenizer_path", str(tmp_path / "other"), "--pre_tokenized_dataset_path",
                     str(out), "--output", str(tmp_path / "v.json")]) == 2
    assert "pretokenized with another tokenizer" in capsys.readouterr().err
    assert cli.main(["per-layer-vocab", "--tokenizer_path", str(root / "tok"), "--input", str(root / "corpus.jsonl"),
                     "--per-layer-vocab-size", "5", "--output", str(tmp_path / "v.json")]) == 2
    assert "at least 6" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text(json.dumps({"format": "moderngpt2-per-layer-vocab", "version": 1,
                                                   "strategy": "frequency", "per_layer_vocab_size": 10,
                                                   "tokenizer_fingerprint": "x", "main_vocab_size": 3, "unk_id": 4,
                                                   "vocab": {}, "token_map": [0, 1, 12]}))
    with pytest.raises(UserError, match=r"bad\.json: token_map or unk_id holds ids outside 0\.\.9"):
        load_per_layer_vocab(str(tmp_path / "bad.json"))
    with pytest.raises(UserError, match="per-layer vocabulary file not found"):
        load_per_layer_vocab(str(tmp_path / "none.json"))


def test_output_file_is_the_canonical_name_of_the_vocabulary_file(setup, tmp_path, capsys):
    """--output_file, --output and Megatron's --per-layer-vocab-file name the same file; one is required."""
    root, _, _ = setup
    flags = ["per-layer-vocab", "--tokenizer_path", str(root / "tok"), "--input", str(root / "corpus.jsonl"),
             "--per-layer-vocab-size", str(V_P), "--per-layer-strategy", "frequency", "--no_progress"]
    for flag in ("--output_file", "--output", "--per-layer-vocab-file"):
        assert cli.main([*flags, flag, str(tmp_path / f"{flag.strip('-')}.json")]) == 0
    written = {(tmp_path / f"{flag.strip('-')}.json").read_bytes() for flag in
               ("--output_file", "--output", "--per-layer-vocab-file")}
    assert len(written) == 1 and load_per_layer_vocab(str(tmp_path / "output_file.json")).per_layer_vocab_size == V_P
    capsys.readouterr()
    assert cli.main(flags) == 2
    assert "error: --output_file is required" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["per-layer-vocab", "--help"])
    shown = capsys.readouterr().out
    assert "--output_file OUTPUT_FILE" in shown and "--seed SEED" in shown and "(default: 0)" in shown
    assert "--per-layer-vocab-file" not in shown and "--output OUTPUT" not in shown
