"""`moderngpt2 export --format gemma2`: the exported directory is a plain transformers Gemma2ForCausalLM with our logits.

The feature matrix: softcapping on and off, Gemma2's alternating window, a custom layer pattern and no window,
GQA / MQA / MHA, tied and untied heads, head_dim != n_embd / n_head, query_pre_attn_scalar != head_dim, a
non-default rope_theta and activation. Every parameter is random and large enough to matter.
"""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, Gemma2ForCausalLM

from moderngpt2 import ModernGPT2Config, ModernGPT2ForCausalLM, cli
from moderngpt2.convert import convert_gemma2
from moderngpt2.errors import UserError
from moderngpt2.export.gemma2 import export_gemma2
from moderngpt2.tokenization import train_tokenizer

TOLERANCE = 1e-5
VOCAB = 320
BASE = dict(vocab_size=VOCAB, n_embd=64, n_layer=4, n_head=4, n_positions=64, n_inner=96, pad_token_id=2,
            eos_token_id=0, bos_token_id=0)
CONFIGS = {
    "softcap_window_gqa": dict(attn_logit_softcapping=5.0, final_logit_softcapping=3.0, sliding_window=4,
                               num_key_value_heads=2, head_dim=24, query_pre_attn_scalar=40),
    "plain_mqa_untied": dict(num_key_value_heads=1, head_dim=16, tie_word_embeddings=False, rope_theta=500.0),
    "custom_pattern_mha": dict(num_key_value_heads=4, head_dim=12, sliding_window=3, activation_function="gelu",
                               layer_types=["full_attention", "sliding_attention", "sliding_attention",
                                            "full_attention"], final_logit_softcapping=10.0),
}


def random_model(base=None, **overrides) -> ModernGPT2ForCausalLM:
    """A model whose embeddings, norm gains and projections are all large enough to matter in the logits."""
    model = ModernGPT2ForCausalLM(ModernGPT2Config(**{**(base or BASE), **overrides}))
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.normal_(0.0, 1.0 if "embed" in name else 0.3 if "norm" in name else 0.15)
    return model.eval()


def small_tokenizer():
    texts = [f"the quick brown fox {i} jumps over the lazy dog {i * 7}" for i in range(40)]
    return train_tokenizer(texts, vocab_size=300, progress=False)


def padded_batch():
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(3, VOCAB, (2, 12), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    input_ids[1, :3], attention_mask[1, :3] = BASE["pad_token_id"], 0
    return input_ids, attention_mask


def save_checkpoint(model, directory):
    model.save_pretrained(directory)
    small_tokenizer().save_pretrained(directory)
    return directory


@pytest.fixture(scope="module", params=list(CONFIGS))
def exported(request, tmp_path_factory):
    """(name, our model, its checkpoint directory, the exported Gemma2 directory)."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp(request.param)
    model = random_model(**CONFIGS[request.param])
    save_checkpoint(model, root / "ours")
    export_gemma2(root / "ours", root / "gemma2")
    return request.param, model, root / "ours", root / "gemma2"


def test_exported_logits_match(exported):
    name, model, _, directory = exported
    gemma2 = Gemma2ForCausalLM.from_pretrained(directory).eval()
    input_ids, attention_mask = padded_batch()
    with torch.no_grad():
        expected = model(input_ids=input_ids, attention_mask=attention_mask).logits
        actual = gemma2(input_ids=input_ids, attention_mask=attention_mask).logits
    valid = attention_mask.bool()
    max_diff = (actual - expected)[valid].abs().max().item()
    print(f"[{name}] max |logit diff| Gemma2ForCausalLM vs ModernGPT2: {max_diff:.3e}")
    assert max_diff < TOLERANCE
    assert expected[valid].std() > 0.5


def test_exported_greedy_generation_matches(exported):
    _, model, _, directory = exported
    gemma2 = Gemma2ForCausalLM.from_pretrained(directory).eval()
    input_ids, attention_mask = padded_batch()
    prompt, mask = input_ids[:, :6], attention_mask[:, :6]
    settings = dict(max_new_tokens=10, do_sample=False, pad_token_id=BASE["pad_token_id"], eos_token_id=None)
    with torch.no_grad():
        expected = model.generate(prompt, attention_mask=mask, **settings)
        actual = gemma2.generate(prompt, attention_mask=mask, **settings)
    assert actual.shape == (2, 16) and torch.equal(actual, expected)


def test_exported_directory_needs_no_remote_code(exported):
    name, model, _, directory = exported
    config = json.loads((directory / "config.json").read_text())
    assert config["model_type"] == "gemma2" and config["architectures"] == ["Gemma2ForCausalLM"]
    assert "auto_map" not in config and not list(directory.glob("*.py")) and config["use_cache"] is True
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] == model.config.rope_theta
    assert config["layer_types"] == model.config.layer_types
    generation = json.loads((directory / "generation_config.json").read_text())
    assert generation["eos_token_id"] == BASE["eos_token_id"] and generation["pad_token_id"] == BASE["pad_token_id"]
    tokenizer_config = json.loads((directory / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert "backend" not in tokenizer_config and "extra_special_tokens" not in tokenizer_config
    card = (directory / "README.md").read_text()
    assert "Gemma2ForCausalLM" in card and "trust_remote_code" not in card
    assert f"{sum(p.numel() for p in model.parameters()):,}" in card  # total parameters
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert tokenizer.model_max_length == BASE["n_positions"]
    original = small_tokenizer()
    text = "the lazy fox<|endoftext|>jumps<pad>"
    assert tokenizer(text)["input_ids"] == original(text)["input_ids"]
    assert (tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token) == ("<|endoftext|>", "<pad>", "<unk>")


def test_round_trip_through_convert_gemma2_is_bit_identical(exported, tmp_path):
    _, model, ours, directory = exported
    convert_gemma2(directory, tmp_path / "back")
    original, returned = load_file(ours / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert original.keys() == returned.keys()
    for key, tensor in original.items():
        assert returned[key].dtype == tensor.dtype and torch.equal(returned[key], tensor), key
    before = model.config.to_dict()
    after = ModernGPT2ForCausalLM.from_pretrained(tmp_path / "back").config.to_dict()
    for field in ("n_embd", "n_layer", "n_head", "num_key_value_heads", "head_dim", "n_inner", "rope_theta",
                  "query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping", "sliding_window",
                  "layer_types", "activation_function", "tie_word_embeddings", "rms_norm_eps", "n_positions"):
        assert after[field] == before[field], field


def test_bfloat16_cast(tmp_path):
    model = random_model(**CONFIGS["softcap_window_gqa"])
    save_checkpoint(model, tmp_path / "ours")
    export_gemma2(tmp_path / "ours", tmp_path / "bf16", dtype=torch.bfloat16)
    gemma2 = Gemma2ForCausalLM.from_pretrained(tmp_path / "bf16", dtype="auto")
    assert gemma2.model.embed_tokens.weight.dtype == torch.bfloat16
    assert torch.equal(gemma2.model.layers[2].mlp.up_proj.weight,
                       model.model.layers[2].mlp.up_proj.weight.to(torch.bfloat16))


def test_per_layer_embeddings_are_refused(tmp_path):
    model = random_model(use_per_layer_embedding=True, per_layer_vocab_size=32, per_layer_hidden_size=8)
    save_checkpoint(model, tmp_path / "ple")
    with pytest.raises(UserError, match="per-layer embeddings .* trust_remote_code"):
        export_gemma2(tmp_path / "ple", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_refusals_are_one_line_and_leave_nothing(tmp_path, capsys):
    save_checkpoint(random_model(n_head=3, num_key_value_heads=1, head_dim=16), tmp_path / "odd_heads")
    save_checkpoint(random_model(**CONFIGS["plain_mqa_untied"]), tmp_path / "ours")
    capsys.readouterr()  # the checkpoints' own progress bars

    def run(*argv):
        code = cli.main(["export", *map(str, argv)])
        return code, capsys.readouterr()

    code, out = run("--format", "gemma2", tmp_path / "odd_heads", tmp_path / "out")
    assert code == 2 and "n_embd=64 is not a multiple of n_head=3" in out.err
    assert len(out.err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()

    code, out = run("--format", "gemma2", tmp_path / "ours", tmp_path / "out", "--dtype", "q8_0")
    assert code == 2 and "--dtype q8_0 is not available for --format gemma2" in out.err

    code, out = run("--format", "gemma2", tmp_path / "ours", tmp_path / "out")
    assert code == 0 and "Gemma2ForCausalLM" in out.out
    written = (tmp_path / "out" / "model.safetensors").read_bytes()
    code, out = run("--format", "gemma2", tmp_path / "ours", tmp_path / "out")
    assert code == 2 and "--overwrite" in out.err
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == written

    code, out = run("--format", "gemma2", tmp_path / "out", tmp_path / "again")
    assert code == 2 and "model_type is 'gemma2', expected 'moderngpt2'" in out.err
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_cli_canonical_flags_equal_the_positionals(tmp_path, capsys):
    """`--model SRC --output_dir DST --dtype bf16` writes the bytes `SRC DST --dtype bfloat16` writes."""
    save_checkpoint(random_model(**CONFIGS["plain_mqa_untied"]), tmp_path / "ours")
    src = str(tmp_path / "ours")
    assert cli.main(["export", "--format", "gemma2", "--model", src, "--output_dir", str(tmp_path / "a"),
                     "--dtype", "bf16"]) == 0
    assert cli.main(["export", "--format", "gemma2", src, str(tmp_path / "b"), "--dtype", "bfloat16"]) == 0
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    capsys.readouterr()

    for argv, message in [
        (["--outtype", "q8_0", src, str(tmp_path / "c")], "--outtype is a GGUF tensor type"),
        (["--output_file", str(tmp_path / "c"), src], "--output_file is the output of --format gguf"),
        ([src], "export --format gemma2 SRC DST"),
    ]:
        assert cli.main(["export", "--format", "gemma2", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    assert cli.main(["export", src, str(tmp_path / "c")]) == 2
    assert "give --format gemma2 or --format gguf" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
