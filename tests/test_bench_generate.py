"""`moderngpt2 bench generate` on the CPU with tiny shapes: promised fields, consistent numbers, one-line errors."""

import json
import math

import pytest
import torch

from moderngpt2.cli import run as cli_run
from moderngpt2.cli import main as cli_main

TINY = ["--size", "tiny", "--vocab-size", "512", "--device", "cpu"]



@pytest.mark.slow
def test_generate_bench_reports_tokens_per_second_and_ratios(tmp_path):
    out = tmp_path / "generate.json"
    rc = cli_run(["bench", "generate", *TINY, "--batch", "1,3", "--prompt-len", "8", "--new-tokens", "5", "--repeats", "2",
                     "--models", "ours,ours-static,gemma2", "--json", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["environment"]["device"] and report["environment"]["torch"] == torch.__version__
    assert report["settings"]["batch"] == [1, 3] and report["settings"]["new_tokens"] == 5
    assert set(report["results"]) == {"1", "3"}
    for batch, results in report["results"].items():
        assert set(results) == {"ours", "ours-static", "gemma2"}
        for name, result in results.items():
            for field in ("tokens_per_s", "ms_per_token", "seconds", "warmup_s"):
                assert math.isfinite(result[field]) and result[field] > 0, (batch, name, field)
            assert result["tokens_per_s"] == pytest.approx(int(batch) * 5 / result["seconds"])
            assert result["ms_per_token"] == pytest.approx(result["seconds"] / 5 * 1000)
        assert results["ours"]["cache"] == "dynamic" and results["ours-static"]["cache"] == "static"
        assert not results["ours-static"]["compiled"]  # transformers compiles the static decode step on GPUs only
        ratios = report["ratios"][batch]
        assert set(ratios) == {"ours/gemma2", "ours-static/gemma2"}
        for pair, value in ratios.items():
            ours, theirs = pair.split("/")
            assert value == pytest.approx(results[ours]["tokens_per_s"] / results[theirs]["tokens_per_s"])


def test_generate_bench_bad_settings_are_one_line_errors(capsys):
    assert cli_main(["bench", "generate", *TINY, "--batch", "1,zero"]) == 2
    assert cli_main(["bench", "generate", *TINY, "--new-tokens", "0"]) == 2
    assert cli_main(["bench", "generate", *TINY, "--models", "ours,llama"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("moderngpt2 bench generate: error:")]
    assert len(errors) == 3 and "1,zero" in errors[0] and "--new_tokens" in errors[1] and "llama" in errors[2]
