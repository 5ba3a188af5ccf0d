"""Reading text: every input kind, exact resume positions, and one clear line for each kind of bad record."""

import gzip
import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from moderngpt2.data.sources import decode_chunk, iter_chunks, iter_texts, resolve_sources
from moderngpt2.errors import UserError

DOCS = ["first document", "second one\nwith two lines", "日本語の文書です。", "한국어 문서", "中文文档。"]


def write_jsonl(path, docs, field="text"):
    with open(path, "w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps({field: doc, "id": len(doc)}, ensure_ascii=False) + "\n")
    return str(path)


def test_jsonl_txt_parquet_gz_directory_and_glob(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", DOCS[:2])
    (tmp_path / "b.txt").write_text("plain line one\n\nplain line two\n", encoding="utf-8")
    pq.write_table(pa.table({"content": DOCS[2:]}), tmp_path / "c.parquet")
    with gzip.open(tmp_path / "d.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"text": "zipped"}) + "\n")
    (tmp_path / "notes.md").write_text("ignored in directories")

    assert list(iter_texts([str(tmp_path / "a.jsonl")])) == DOCS[:2]
    assert list(iter_texts([str(tmp_path / "b.txt")])) == ["plain line one", "plain line two"]
    assert list(iter_texts([str(tmp_path / "c.parquet")], text_field="content")) == DOCS[2:]
    assert list(iter_texts([str(tmp_path / "d.jsonl.gz")])) == ["zipped"]
    # a directory: its supported files in sorted order (the parquet has no "text" column -> clear error)
    with pytest.raises(UserError, match=r"c\.parquet: no column 'text' \(columns: content\)"):
        list(iter_texts([str(tmp_path)]))
    assert list(iter_texts([str(tmp_path / "*.jsonl*"), str(tmp_path / "b.txt")])) == \
        DOCS[:2] + ["zipped", "plain line one", "plain line two"]
    assert list(iter_texts([str(tmp_path / "a.jsonl")], limit=1)) == DOCS[:1]


def test_datasets_sources_saved_and_by_path(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"text": DOCS}).save_to_disk(str(tmp_path / "saved"))
    assert list(iter_texts([str(tmp_path / "saved")])) == DOCS
    (tmp_path / "repo").mkdir()
    write_jsonl(tmp_path / "repo" / "data.jsonl", DOCS[:3])
    # an existing directory is read as files unless named as a `datasets` source explicitly
    assert list(iter_texts([f"datasets:{tmp_path / 'repo'}"])) == DOCS[:3]
    with pytest.raises(UserError, match="cannot load dataset 'no-such-owner/no-such-dataset'"):
        list(iter_texts(["no-such-owner/no-such-dataset"]))


def _c4_repository(root):
    """A local copy of the C4 repository layout: one config per language, declared in the README."""
    (root / "en").mkdir(parents=True)
    (root / "multilingual").mkdir()
    langs = {"en": ["en doc 0", "en doc 1", "en doc 2"], "ja": ["日本 0", "日本 1"]}
    for lang, docs in langs.items():
        path = root / ("en/c4-train.00000-of-00001.json.gz" if lang == "en"
                       else f"multilingual/c4-{lang}.tfrecord-00000-of-00001.json.gz")
        with gzip.open(path, "wt", encoding="utf-8") as f:
            for doc in docs:
                f.write(json.dumps({"text": doc, "timestamp": "2019", "url": "http://x"}) + "\n")
    (root / "README.md").write_text(
        "---\nconfigs:\n"
        "- config_name: en\n  data_files:\n  - split: train\n    path: en/c4-train.*.json.gz\n"
        "- config_name: ja\n  data_files:\n  - split: train\n    path: multilingual/c4-ja.tfrecord-*.json.gz\n"
        "---\n# C4 (local copy)\n")
    return langs


def test_c4_languages_are_interleaved_and_resume_exactly(tmp_path):
    _c4_repository(tmp_path / "c4")
    expected = ["en doc 0", "日本 0", "en doc 1", "日本 1", "en doc 2"]
    assert list(iter_texts(["c4:en,ja"], c4_dataset=str(tmp_path / "c4"))) == expected
    sources = resolve_sources(["c4:en,ja"], str(tmp_path / "c4"))
    chunks = list(iter_chunks(sources, chunk_bytes=1))
    for i, chunk in enumerate(chunks[:-1]):
        rest = [t for c in iter_chunks(sources, chunk.end, chunk_bytes=1) for t in decode_chunk(c)[0]]
        assert rest == expected[i + 1:]


@pytest.mark.parametrize("kind", ["jsonl", "txt", "parquet", "saved"])
def test_every_chunk_end_is_an_exact_resume_point(tmp_path, kind):
    docs = [f"document number {i} " + "x" * (i % 7) for i in range(40)]
    if kind == "jsonl":
        spec = write_jsonl(tmp_path / "d.jsonl", docs)
    elif kind == "txt":
        (tmp_path / "d.txt").write_text("\n".join(docs), encoding="utf-8")  # no final newline
        spec = str(tmp_path / "d.txt")
    elif kind == "parquet":
        pq.write_table(pa.table({"text": docs}), tmp_path / "d.parquet", row_group_size=6)
        spec = str(tmp_path / "d.parquet")
    else:
        import datasets

        datasets.Dataset.from_dict({"text": docs}).save_to_disk(str(tmp_path / "saved"))
        spec = str(tmp_path / "saved")
    sources = resolve_sources([spec])
    chunks = list(iter_chunks(sources, chunk_bytes=60))
    assert [t for c in chunks for t in decode_chunk(c)[0]] == docs
    assert len(chunks) > 5
    for chunk in chunks:
        done = chunk.end.records
        rest = [t for c in iter_chunks(sources, chunk.end, chunk_bytes=60) for t in decode_chunk(c)[0]]
        assert rest == docs[done:]


BAD_LINES = [
    (b'{"text": "ok"}\n{"text": "broken\n', r"bad\.jsonl:2: malformed JSON \(Unterminated string", "malformed JSON"),
    (b'{"text": "ok"}\n{"body": "x"}\n', r"bad\.jsonl:2: no 'text' field \(the record has: body\)",
     "missing text field"),
    (b'{"text": "ok"}\n\n{"text": "   "}\n', r"bad\.jsonl:3: empty document", "empty document"),
    (b'{"text": "ok"}\n{"text": "caf\xe9"}\n', r"bad\.jsonl:2: invalid UTF-8 \(byte 0xe9 at byte 14", "invalid UTF-8"),
    (b'{"text": "ok"}\n{"text": "\\ud800"}\n', r"bad\.jsonl:2: invalid UTF-8 \(a lone surrogate", "invalid UTF-8"),
    (b'{"text": "ok"}\n[1, 2]\n', r"bad\.jsonl:2: expected a JSON object", "malformed JSON"),
]


@pytest.mark.parametrize("content, message, reason", BAD_LINES)
def test_bad_records_name_file_and_line_or_are_skipped_and_counted(tmp_path, content, message, reason):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message) as error:
        list(iter_texts([str(path)]))
    assert "\n" not in str(error.value) and "--on_bad_record skip" in str(error.value)
    skipped = Counter()
    assert list(iter_texts([str(path)], on_bad_record="skip", skipped=skipped)) == ["ok"]
    assert skipped == Counter({reason: 1})


def test_bad_rows_and_files(tmp_path):
    pq.write_table(pa.table({"text": ["fine", None, ""]}), tmp_path / "rows.parquet")
    with pytest.raises(UserError, match=r"rows\.parquet: row 1: empty document"):
        list(iter_texts([str(tmp_path / "rows.parquet")]))
    skipped = Counter()
    assert list(iter_texts([str(tmp_path / "rows.parquet")], on_bad_record="skip", skipped=skipped)) == ["fine"]
    assert skipped["empty document"] == 2
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(UserError, match=r"cannot read Parquet file .*broken\.parquet"):
        list(iter_texts([str(tmp_path / "broken.parquet")]))
    with pytest.raises(UserError, match=r"Input file not found: .*missing\.jsonl"):
        list(iter_texts([str(tmp_path / "missing.jsonl")]))
    with pytest.raises(UserError, match="no file matches"):
        list(iter_texts([str(tmp_path / "*.nothing")]))
    (tmp_path / "table.csv").write_text("a,b\n")
    with pytest.raises(UserError, match=r"table\.csv: unsupported file type"):
        list(iter_texts([str(tmp_path / "table.csv")]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no .jsonl"):
        list(iter_texts([str(tmp_path / "empty")]))
