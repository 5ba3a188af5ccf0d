"""`moderngpt2 convert-gemma2`: converted checkpoints reproduce transformers' Gemma2ForCausalLM.

Random tiny Gemma2 models with every quirk that matters (attention and final softcapping at values that
bite, alternating sliding windows shorter than the sequence, GQA, a query_pre_attn_scalar that is not
head_dim, an MLP width that is not 4*hidden), left padding, and greedy generation past the window.
"""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Gemma2Config, Gemma2ForCausalLM, PreTrainedTokenizerFast

from moderngpt2 import ModernGPT2ForCausalLM, cli
from moderngpt2.convert import convert_gemma2
from moderngpt2.gemma2_mapping import to_moderngpt2_key
from moderngpt2.errors import UserError

TOLERANCE = 1e-5

BASE = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,  # not 4 * hidden_size
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,  # GQA
    head_dim=24,  # not hidden_size / num_attention_heads
    query_pre_attn_scalar=40,  # not head_dim
    max_position_embeddings=64,
    pad_token_id=0,
    eos_token_id=1,
    bos_token_id=2,
)
CONFIGS = {
    # small caps so that softcapping changes the numbers; window 4 < sequence length 12
    "softcap_sliding_gqa": dict(attn_logit_softcapping=5.0, final_logit_softcapping=3.0, sliding_window=4),
    "full_attention_mqa_untied": dict(
        attn_logit_softcapping=None,
        final_logit_softcapping=None,
        sliding_window=4,  # Gemma2 needs one even when no layer slides; the converter drops it
        layer_types=["full_attention"] * 4,
        num_key_value_heads=1,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
    ),
}


def random_gemma2(**overrides) -> Gemma2ForCausalLM:
    """A Gemma2 with weights large enough that every scale, cap and norm gain shows in the logits."""
    config = Gemma2Config(**{**BASE, **overrides})
    model = Gemma2ForCausalLM(config)
    # eager is transformers' reference Gemma2 attention; sdpa is refused for softcapping
    model.set_attn_implementation("eager")
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.normal_(0.0, 1.0 if "embed" in name else 0.3 if "norm" in name else 0.15)
    return model.eval()


def padded_batch():
    """Two rows of 12 tokens; the second is left-padded by 3 (pad id 0, mask 0)."""
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(3, BASE["vocab_size"], (2, 12), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    input_ids[1, :3], attention_mask[1, :3] = 0, 0
    return input_ids, attention_mask


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, **{f"w{i}": i for i in range(3, BASE["vocab_size"])}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>")


@pytest.fixture(scope="module", params=list(CONFIGS))
def converted(request, tmp_path_factory):
    """(name, Gemma2 reference, converted ModernGPT2 loaded through AutoModelForCausalLM, dst directory)."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp(request.param)
    gemma2 = random_gemma2(**CONFIGS[request.param])
    # a shard limit this small splits the checkpoint into several files: the index path gets exercised
    gemma2.save_pretrained(root / "gemma2", max_shard_size="100KB")
    tiny_tokenizer().save_pretrained(root / "gemma2")
    convert_gemma2(root / "gemma2", root / "moderngpt2")
    model = AutoModelForCausalLM.from_pretrained(root / "moderngpt2").eval()
    return request.param, gemma2, model, root / "moderngpt2"


def test_converted_logits_match_gemma2(converted):
    name, gemma2, model, _ = converted
    assert isinstance(model, ModernGPT2ForCausalLM)
    input_ids, attention_mask = padded_batch()
    with torch.no_grad():
        expected = gemma2(input_ids=input_ids, attention_mask=attention_mask).logits
        actual = model(input_ids=input_ids, attention_mask=attention_mask).logits
    valid = attention_mask.bool()  # padded queries are undefined in both models
    max_diff = (actual - expected)[valid].abs().max().item()
    print(f"[{name}] max |logit diff| vs Gemma2ForCausalLM: {max_diff:.3e}")
    assert max_diff < TOLERANCE
    assert expected[valid].std() > 0.5  # the logits carry signal, so the comparison means something


def test_converted_greedy_generation_matches_gemma2(converted):
    _, gemma2, model, _ = converted
    input_ids, attention_mask = padded_batch()
    prompt, mask = input_ids[:, :7], attention_mask[:, :7]  # 7 + 8 new tokens run well past the window of 4
    settings = dict(max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        expected = gemma2.generate(prompt, attention_mask=mask, **settings)
        actual = model.generate(prompt, attention_mask=mask, **settings)
    assert expected.shape == (2, 15)
    assert torch.equal(actual, expected)


def test_converted_directory_layout(converted):
    name, gemma2, _, dst = converted
    config = json.loads((dst / "config.json").read_text())
    assert config["model_type"] == "moderngpt2"
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_moderngpt2.ModernGPT2ForCausalLM"
    assert (dst / "modeling_moderngpt2.py").is_file() and (dst / "configuration_moderngpt2.py").is_file()
    assert config["n_inner"] == 96 and config["query_pre_attn_scalar"] == 40 and config["head_dim"] == 24
    assert config["layer_types"] == gemma2.config.layer_types
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert ("lm_head.weight" in index["weight_map"]) == (not gemma2.config.tie_word_embeddings)
    expected_bytes = sum(p.numel() * p.element_size() for p in gemma2.parameters())
    assert index["metadata"]["total_size"] == expected_bytes
    if name == "full_attention_mqa_untied":
        assert config["rope_theta"] == 500.0
    tokenizer = AutoTokenizer.from_pretrained(dst)
    assert tokenizer("w5 w17 w3")["input_ids"] == [5, 17, 3]


@pytest.mark.parametrize(
    "field, value",
    [("query_pre_attn_scalar", 24), ("attn_logit_softcapping", None), ("final_logit_softcapping", None),
     ("sliding_window", 64)],
)
def test_each_gemma2_quirk_changes_the_logits(tmp_path, field, value):
    """Negative control: dropping any one quirk moves the logits far beyond the parity tolerance."""
    torch.manual_seed(0)
    gemma2 = random_gemma2(**CONFIGS["softcap_sliding_gqa"])
    gemma2.save_pretrained(tmp_path / "gemma2")
    convert_gemma2(tmp_path / "gemma2", tmp_path / "moderngpt2")
    config = json.loads((tmp_path / "moderngpt2" / "config.json").read_text())
    config[field] = value
    (tmp_path / "moderngpt2" / "config.json").write_text(json.dumps(config))
    model = ModernGPT2ForCausalLM.from_pretrained(tmp_path / "moderngpt2").eval()
    input_ids, _ = padded_batch()
    with torch.no_grad():
        diff = (model(input_ids).logits - gemma2(input_ids).logits).abs().max().item()
    assert diff > 1e-2


def test_bfloat16_checkpoint_keeps_its_dtype(tmp_path):
    torch.manual_seed(0)
    gemma2 = random_gemma2(**CONFIGS["softcap_sliding_gqa"]).to(torch.bfloat16)
    gemma2.save_pretrained(tmp_path / "gemma2")
    convert_gemma2(tmp_path / "gemma2", tmp_path / "bf16")
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    model = ModernGPT2ForCausalLM.from_pretrained(tmp_path / "bf16", dtype="auto")
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert torch.equal(model.model.layers[1].mlp.up_proj.weight, gemma2.model.layers[1].mlp.up_proj.weight)

    convert_gemma2(tmp_path / "gemma2", tmp_path / "fp32", dtype=torch.float32)
    model = ModernGPT2ForCausalLM.from_pretrained(tmp_path / "fp32", dtype="auto")
    assert model.model.embed_tokens.weight.dtype == torch.float32


def test_key_map():
    assert to_moderngpt2_key("model.layers.11.self_attn.k_proj.weight") == "model.layers.11.self_attn.k_proj.weight"
    assert to_moderngpt2_key("model.norm.weight") == "model.norm.weight"
    with pytest.raises(UserError, match="q_norm"):  # a Gemma3 tensor
        to_moderngpt2_key("model.layers.0.self_attn.q_norm.weight")


def run_cli(argv, capsys):
    code = cli.main(argv)
    return code, capsys.readouterr()


def test_cli_converts_and_refuses_bad_input(tmp_path, capsys):
    torch.manual_seed(0)
    random_gemma2(**CONFIGS["softcap_sliding_gqa"]).save_pretrained(tmp_path / "gemma2")

    code, out = run_cli(["convert-gemma2", str(tmp_path / "gemma2"), str(tmp_path / "out")], capsys)
    assert code == 0 and "wrote ModernGPT2 checkpoint" in out.out
    written = (tmp_path / "out" / "model.safetensors").read_bytes()

    # an existing output is never overwritten without --overwrite
    code, out = run_cli(["convert-gemma2", str(tmp_path / "gemma2"), str(tmp_path / "out")], capsys)
    assert code == 2 and "--overwrite" in out.err and len(out.err.strip().splitlines()) == 1
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == written

    # not a Gemma2 checkpoint: its own ModernGPT2 output
    code, out = run_cli(["convert-gemma2", str(tmp_path / "out"), str(tmp_path / "again")], capsys)
    assert code == 2 and "model_type is 'moderngpt2', expected 'gemma2'" in out.err
    assert not (tmp_path / "again").exists()

    code, out = run_cli(["convert-gemma2", str(tmp_path / "missing"), str(tmp_path / "again")], capsys)
    assert code == 2 and "missing" in out.err

    # a config that contradicts the weights: error names the tensor, nothing is left behind
    config = json.loads((tmp_path / "gemma2" / "config.json").read_text())
    config["intermediate_size"] = 128
    (tmp_path / "gemma2" / "config.json").write_text(json.dumps(config))
    code, out = run_cli(["convert-gemma2", str(tmp_path / "gemma2"), str(tmp_path / "again")], capsys)
    assert code == 2 and "mlp.down_proj.weight' has shape (64, 96), but the config implies (64, 128)" in out.err
    assert not (tmp_path / "again").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_converts_a_checkpoint_saved_by_older_transformers(tmp_path):
    """The config.json layout of the published Gemma2 checkpoints (transformers 4.42): top-level rope_theta,
    hidden_act beside hidden_activation, no layer_types, torch_dtype, and a "hybrid" cache in generation_config."""
    torch.manual_seed(0)
    rope = {"rope_type": "default", "rope_theta": 500.0}
    reference = random_gemma2(**CONFIGS["softcap_sliding_gqa"], rope_parameters=rope)
    reference.save_pretrained(tmp_path / "gemma2")
    config = json.loads((tmp_path / "gemma2" / "config.json").read_text())
    for key in ("layer_types", "rope_parameters", "dtype", "use_bidirectional_attention"):
        config.pop(key)
    config.update(rope_theta=500.0, hidden_act="gelu_pytorch_tanh", cache_implementation="hybrid",
                  torch_dtype="float32", transformers_version="4.42.4")
    (tmp_path / "gemma2" / "config.json").write_text(json.dumps(config))
    generation_path = tmp_path / "gemma2" / "generation_config.json"
    generation = json.loads(generation_path.read_text())
    generation_path.write_text(json.dumps({**generation, "cache_implementation": "hybrid"}))

    convert_gemma2(tmp_path / "gemma2", tmp_path / "moderngpt2")
    converted = json.loads((tmp_path / "moderngpt2" / "config.json").read_text())
    assert converted["rope_theta"] == 500.0 and converted["layer_types"] == reference.config.layer_types
    assert "cache_implementation" not in json.loads((tmp_path / "moderngpt2" / "generation_config.json").read_text())
    model = ModernGPT2ForCausalLM.from_pretrained(tmp_path / "moderngpt2").eval()
    input_ids, attention_mask = padded_batch()
    with torch.no_grad():
        expected = reference(input_ids=input_ids, attention_mask=attention_mask).logits
        actual = model(input_ids=input_ids, attention_mask=attention_mask).logits
    assert (actual - expected)[attention_mask.bool()].abs().max() < TOLERANCE


def test_cli_canonical_flags_equal_the_positionals(tmp_path, capsys):
    """`--model SRC --output_dir DST --dtype bf16` writes the bytes `SRC DST --dtype bfloat16` writes."""
    torch.manual_seed(0)
    random_gemma2(**CONFIGS["softcap_sliding_gqa"]).save_pretrained(tmp_path / "gemma2")
    src = str(tmp_path / "gemma2")
    assert run_cli(["convert-gemma2", "--model", src, "--output_dir", str(tmp_path / "a"), "--dtype", "bf16"],
                   capsys)[0] == 0
    assert run_cli(["convert-gemma2", src, str(tmp_path / "b"), "--dtype", "bfloat16"], capsys)[0] == 0
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    assert json.loads((tmp_path / "a" / "config.json").read_text())["dtype"] == "bfloat16"

    for argv, message in [
        (["--model", str(tmp_path / "other"), src, str(tmp_path / "c")], "unexpected argument(s)"),
        ([src], "convert-gemma2 SRC DST"),
        ([src, str(tmp_path / "c"), "--dtype", "int8"], "--dtype int8: choose one of"),
    ]:
        code, out = run_cli(["convert-gemma2", *argv], capsys)
        assert code == 2 and message in out.err and len(out.err.strip().splitlines()) == 1
    assert not (tmp_path / "c").exists()
