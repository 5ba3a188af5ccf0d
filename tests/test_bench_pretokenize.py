"""The pretokenize benchmark runs both pipelines on one corpus, checks they agree, and reports both speeds."""

import json

import pytest

from moderngpt2.cli import main, run


@pytest.mark.slow
def test_bench_pretokenize_reports_both_throughputs_on_the_same_stream(tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    with open(corpus, "w", encoding="utf-8") as f:
        for i in range(600):
            f.write(json.dumps({"text": f"Document {i}: " + "the numbers keep rising and falling. " * (i % 9 + 1)})
                    + "\n")
    assert run(["bench", "pretokenize", "--input", str(corpus), "--vocab_size", "400", "--block_size", "64",
                "--json", str(tmp_path / "r.json")]) == 0
    printed = capsys.readouterr().out
    assert "same token stream: yes" in printed and "ratio" in printed
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["same_token_stream"] is True
    assert result["ours_mb_per_s"] > 0 and result["baseline_mb_per_s"] > 0
    assert result["ratio"] == pytest.approx(result["ours_mb_per_s"] / result["baseline_mb_per_s"], rel=0.01)


def test_an_unwritable_results_path_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert main(["bench", "pretokenize", "--output_json", str(tmp_path / "file" / "r.json")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("moderngpt2 bench pretokenize: error: --output_json") and "is a file" in error
