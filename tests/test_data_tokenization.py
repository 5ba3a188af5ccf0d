"""Tokenizers: trained ones load with AutoTokenizer, round-trip four scripts, keep specials first; GPT-2
vocab/merges pairs work wherever a tokenizer does; the fingerprint follows what decides the ids."""

import json

import pytest
from transformers import AutoTokenizer

from moderngpt2 import cli
from moderngpt2.errors import UserError
from moderngpt2.tokenization import load_tokenizer, save_tokenizer, tokenizer_fingerprint, train_tokenizer

SENTENCES = {
    "en": "The committee postponed its decision until the spring; nobody objected.",
    "ja": "駅の近くに新しい図書館ができたので、週末はそこで本を読んでいます。",
    "ko": "비가 그친 뒤에 우리는 강가를 따라 천천히 산책했습니다.",
    "zh": "他每天早上六点起床，先喝一杯茶，然后去公园跑步。",
}
UNSEEN = "Ünïcödé — ∮ 龘靐齉 🎉\ttabs\n  and  spaces "


def corpus_lines():
    """Training text in four scripts, written for these tests (not the sentences checked below)."""
    base = [
        "A small library opened near the station, and people read there on weekends.",
        "Rain fell all night, so the river rose and the bridge was closed in the morning.",
        "図書館は駅の近くにあります。雨の日には多くの人が本を読みに来ます。",
        "朝早く起きて、公園を散歩しました。川の水が増えていました。",
        "우리는 아침에 공원을 산책했습니다. 비가 와서 강물이 불어났습니다.",
        "도서관은 역 근처에 있고 주말에는 사람들이 책을 읽습니다.",
        "图书馆在车站附近，周末很多人去那里看书。",
        "昨天晚上下了一夜的雨，早上河水涨了，桥也关闭了。",
    ]
    return [f"{line} ({i})" for i in range(40) for line in base]


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "multilingual.jsonl"
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in corpus_lines()),
                    encoding="utf-8")
    return path


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_trained_tokenizer_loads_round_trips_and_keeps_specials_first(tmp_path, corpus_file, model_type, capsys):
    out = tmp_path / model_type
    assert cli.main(["train-tokenizer", "--input", str(corpus_file), "--output_path", str(out), "--vocab_size", "700",
                     "--model_type", model_type, "--special_tokens", "<|endoftext|>", "<unk>", "<pad>", "<mask>",
                     "--no_progress"]) == 0
    assert "fingerprint" in capsys.readouterr().out
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert len(tokenizer) <= 700
    if model_type == "unigram":  # the 256 byte-fallback pieces are part of the vocabulary
        assert tokenizer.convert_tokens_to_ids(["<0x00>", "<0xFF>"]) == [len(tokenizer) - 256, len(tokenizer) - 1]
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token, tokenizer.pad_token) == \
        ("<|endoftext|>", "<|endoftext|>", "<unk>", "<pad>")
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<unk>", "<pad>", "<mask>"]) == [0, 1, 2, 3]
    assert max(tokenizer.all_special_ids) < len(tokenizer)
    for text in [*SENTENCES.values(), UNSEEN, " leading space", "trailing space "]:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(ids) == text
        assert tokenizer.unk_token_id not in ids
    # learned merges: common words of the corpus take fewer tokens than bytes
    assert len(tokenizer.encode("library", add_special_tokens=False)) < len("library")


def test_vocab_and_merges_pair_is_accepted_like_a_tokenizer(tmp_path, corpus_file):
    tokenizer = train_tokenizer((json.loads(line)["text"] for line in corpus_file.open(encoding="utf-8")),
                                vocab_size=600, progress=False)
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    (tmp_path / "vocab.json").write_text(json.dumps(model["vocab"]), encoding="utf-8")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    pair = load_tokenizer(vocab_file=str(tmp_path / "vocab.json"), merge_file=str(tmp_path / "merges.txt"))
    for text in SENTENCES.values():
        assert pair.encode(text, add_special_tokens=False) == tokenizer.encode(text, add_special_tokens=False)
        assert pair.decode(pair.encode(text, add_special_tokens=False)) == text
    assert pair.eos_token == "<|endoftext|>" and pair.eos_token_id == 0
    # ... in pretokenize too (the Megatron-style flag spelling)
    assert cli.main(["pretokenize", "--vocab-file", str(tmp_path / "vocab.json"), "--merge-file",
                     str(tmp_path / "merges.txt"), "--input", str(corpus_file), "--output_path", str(tmp_path / "pt"),
                     "--block_size", "32", "--no_progress"]) == 0
    manifest = json.loads((tmp_path / "pt" / "manifest.json").read_text())
    assert manifest["tokenizer_fingerprint"] == tokenizer_fingerprint(pair)
    with pytest.raises(UserError, match="go together"):
        load_tokenizer(vocab_file=str(tmp_path / "vocab.json"))
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(UserError, match=r"bad\.json: expected a JSON object"):
        load_tokenizer(vocab_file=str(tmp_path / "bad.json"), merge_file=str(tmp_path / "merges.txt"))


def test_fingerprint_is_stable_across_save_and_load_and_tells_tokenizers_apart(tmp_path, corpus_file):
    texts = [json.loads(line)["text"] for line in corpus_file.open(encoding="utf-8")]
    first = train_tokenizer(texts, vocab_size=600, progress=False)
    save_tokenizer(first, str(tmp_path / "tok"))
    reloaded = load_tokenizer(str(tmp_path / "tok"))
    assert tokenizer_fingerprint(reloaded) == tokenizer_fingerprint(first)
    assert tokenizer_fingerprint(train_tokenizer(texts, vocab_size=600, progress=False)) == tokenizer_fingerprint(first)
    assert tokenizer_fingerprint(train_tokenizer(texts, vocab_size=590, progress=False)) != tokenizer_fingerprint(first)


def test_tokenizer_mistakes_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(UserError, match="no tokenizer given"):
        load_tokenizer()
    with pytest.raises(UserError, match=r"Tokenizer not found: \./nowhere/tok"):
        load_tokenizer("./nowhere/tok")
    with pytest.raises(UserError, match="too small"):
        train_tokenizer(["some text"], vocab_size=100, progress=False)
    (tmp_path / "in.jsonl").write_text('{"text": "fine"}\n{oops}\n')
    code = cli.main(["train-tokenizer", "--input", str(tmp_path / "in.jsonl"), "--output_path", str(tmp_path / "t"),
                     "--vocab_size", "300", "--no_progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "in.jsonl:2: malformed JSON" in err
    assert not (tmp_path / "t" / "tokenizer.json").exists()


def test_canonical_flag_names_train_the_same_tokenizer_as_the_old_ones(tmp_path, corpus_file, capsys):
    """--output_dir/--max_input_lines_total are the canonical names; --output_path/--max_train_lines still work."""
    common = ["train-tokenizer", "--input", str(corpus_file), "--vocab_size", "400", "--no_progress"]
    assert cli.main([*common, "--output_path", str(tmp_path / "old"), "--max_train_lines", "100"]) == 0
    assert cli.main([*common, "--output_dir", str(tmp_path / "new"), "--max-input-lines-total", "100"]) == 0
    assert cli.main([*common, "--output_dir", str(tmp_path / "all")]) == 0
    read = {name: (tmp_path / name / "tokenizer.json").read_bytes() for name in ("old", "new", "all")}
    assert read["old"] == read["new"] != read["all"]  # the limit took effect under both names
    capsys.readouterr()
    assert cli.main(common) == 2
    assert capsys.readouterr().err.strip() == ("moderngpt2 train-tokenizer: error: --output_dir is required; see "
                                               "'moderngpt2 train-tokenizer --help'")
    with pytest.raises(SystemExit):
        cli.main(["train-tokenizer", "--help"])
    shown = capsys.readouterr().out
    assert "--output_dir OUTPUT_DIR" in shown and "--max_input_lines_total" in shown
    assert "--output_path" not in shown and "--max_train_lines" not in shown and "--output-dir" not in shown
