"""`moderngpt2 generate|evaluate --framework jax|tf` print what the PyTorch commands print on the same checkpoint."""

import json
import sys

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from moderngpt2 import ModernGPT2Config, ModernGPT2ForCausalLM
from moderngpt2.cli import main as cli

VOCAB = 64
# What each framework's extra must have installed for its tests to run.
FRAMEWORK_MODULES = {"jax": "flax.nnx", "tf": "tensorflow"}


@pytest.fixture(params=list(FRAMEWORK_MODULES))
def framework(request):
    pytest.importorskip(FRAMEWORK_MODULES[request.param])
    return request.param


def word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny PLE model with softcaps and a sliding window, random non-trivial weights, and a word tokenizer."""
    path = tmp_path_factory.mktemp("jax_cli") / "model"
    config = ModernGPT2Config(model_size_name="tiny", vocab_size=VOCAB, n_layer=2, sliding_window=4,
                              attn_logit_softcapping=50.0, final_logit_softcapping=30.0, use_per_layer_embedding=True,
                              per_layer_vocab_size=32, per_layer_hidden_size=8, eos_token_id=1, pad_token_id=0)
    torch.manual_seed(0)
    model = ModernGPT2ForCausalLM(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    model.save_pretrained(path)
    word_tokenizer().save_pretrained(path)
    return path


def test_generate_prints_the_same_greedy_text(checkpoint, framework, capsys):
    printed = {}
    for name in ("torch", framework):
        assert cli(["generate", "--model", str(checkpoint), "--prompt", "w5 w9 w12", "w40", "--max_new_tokens", "12",
                    "--temperature", "0", "--framework", name]) == 0
        printed[name] = capsys.readouterr().out
    assert printed[framework] == printed["torch"]
    assert printed[framework].startswith("w5 w9 w12") and len(printed[framework].split()) > 6


def test_evaluate_reports_the_same_perplexity(checkpoint, framework, tmp_path):
    text = tmp_path / "heldout.txt"
    text.write_text("\n".join(" ".join(f"w{(7 * i + j) % 60 + 3}" for j in range(5 + i)) for i in range(12)))
    numbers = {}
    for name in ("torch", framework):
        out = tmp_path / f"{name}.json"
        assert cli(["evaluate", "--model", str(checkpoint), "--input", str(text), "--block_size", "16",
                    "--batch_size", "3", "--framework", name, "--output_json", str(out)]) == 0
        numbers[name] = json.loads(out.read_text())
    assert numbers[framework]["tokens"] == numbers["torch"]["tokens"] > 50
    assert numbers[framework]["perplexity"] == pytest.approx(numbers["torch"]["perplexity"], rel=1e-4)


def test_flags_of_torch_alone_are_one_line_errors(checkpoint, framework, capsys):
    assert cli(["generate", "--model", str(checkpoint), "--prompt", "w5", "--framework", framework,
                "--repetition_penalty", "1.3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "moderngpt2 generate: error: --repetition_penalty 1.3: only with --framework torch"
    assert cli(["evaluate", "--model", str(checkpoint), "--input", "x.txt", "--framework", framework,
                "--dtype", "bfloat16"]) == 2
    assert "--dtype bfloat16: only with --framework torch" in capsys.readouterr().err


@pytest.mark.parametrize(("name", "package"), [("jax", "flax"), ("tf", "keras")])
def test_a_missing_extra_names_the_install_command(checkpoint, name, package, capsys, monkeypatch):
    for module in [module for module in sys.modules if module.startswith(f"moderngpt2.{name}")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, package, None)  # what an environment without the extra looks like to import
    assert cli(["generate", "--model", str(checkpoint), "--prompt", "w5", "--framework", name]) == 2
    assert capsys.readouterr().err.strip() == (
        f"moderngpt2 generate: error: --framework {name} needs the {name} extra: pip install 'moderngpt2[{name}]'")

def test_bench_generate_reports_the_framework_to_pytorch_ratio(framework, tmp_path):
    out = tmp_path / "bench.json"
    assert cli(["bench", "generate", "--framework", framework, "--size", "tiny", "--vocab-size", "128", "--device",
                "cpu", "--dtype", "fp32", "--batch", "2", "--prompt-len", "6", "--new-tokens", "4", "--repeats", "1",
                "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    results = report["results"]["2"]
    assert set(results) == {"ours", framework} and results[framework]["implementation"] == f"moderngpt2.{framework}"
    assert report["ratios"]["2"] == {f"{framework}/ours": pytest.approx(results[framework]["tokens_per_s"]
                                                                         / results["ours"]["tokens_per_s"])}


def test_bench_generate_keeps_the_tensorflow_model_in_its_dtype(capsys):
    assert cli(["bench", "generate", "--framework", "tf", "--size", "tiny", "--device", "cpu", "--dtype", "bf16"]) == 2
    assert "--dtype bf16: the TensorFlow model computes in float32" in capsys.readouterr().err


def test_a_directory_of_another_model_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert cli(["evaluate", "--model", str(tmp_path), "--input", "x.txt", "--framework", "jax"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"moderngpt2 evaluate: error: {tmp_path}: cannot load the model: config.json has model_type='gpt2', "
        "not 'moderngpt2'")


def test_evaluate_record_limit_and_dtype_spellings(checkpoint, tmp_path):
    """`--max_input_lines_total N` (alias `--max_train_lines`) reads the first N records, as a file of them does;
    `--dtype fp32` is `--dtype float32`; `--json` is `--output_json`."""
    lines = [" ".join(f"w{(5 * i + j) % 60 + 3}" for j in range(6 + i % 4)) for i in range(20)]
    (tmp_path / "all.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "first.txt").write_text("\n".join(lines[:8]) + "\n")
    numbers = []
    for input_file, extra in (("first.txt", ["--dtype", "float32"]),
                              ("all.txt", ["--max_input_lines_total", "8", "--dtype", "fp32"]),
                              ("all.txt", ["--max_train_lines", "8"])):
        out = tmp_path / f"numbers{len(numbers)}.json"
        flag = "--json" if len(numbers) == 2 else "--output_json"
        assert cli(["evaluate", "--model", str(checkpoint), "--input", str(tmp_path / input_file), "--block_size",
                    "8", "--device", "cpu", flag, str(out), *extra]) == 0
        numbers.append(json.loads(out.read_text()))
    assert numbers[0] == numbers[1] == numbers[2] and numbers[0]["tokens"] > 40
