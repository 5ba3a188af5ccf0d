"""`moderngpt2 export --format gguf`: read the file back with gguf's own reader and check every tensor and key.

Beyond the bytes, the file is read the way llama.cpp's gemma2 graph reads it (norm gains used as stored, the
query scale fixed to head_dim ** -0.5, softcaps always applied, even layers sliding) and run through our
model: the logits must be ours, so the neutral values and the folded query scale are proven, not assumed.
"""

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

from moderngpt2 import ModernGPT2Config, ModernGPT2ForCausalLM, cli
from moderngpt2.errors import UserError
from moderngpt2.export.gguf import export_gguf
from moderngpt2.tokenization import train_tokenizer
from test_export_gemma2 import random_model

VOCAB = 320
BASE = dict(vocab_size=VOCAB, n_embd=64, n_layer=3, n_head=4, num_key_value_heads=2, head_dim=24, n_positions=64,
            n_inner=96, pad_token_id=2, eos_token_id=0, bos_token_id=0)
CONFIGS = {
    "gemma2_like": dict(attn_logit_softcapping=5.0, final_logit_softcapping=3.0, sliding_window=4,
                        query_pre_attn_scalar=40, rope_theta=500.0),
    "features_off": dict(num_key_value_heads=1, query_pre_attn_scalar=24),
}
TEXTS = [f"the quick brown fox {i} jumps over the lazy dog {i * 7}, naïve café" for i in range(40)]
# gguf name -> (our name, is an RMSNorm gain stored as 1 + w); "{}" is the layer index.
EXPECTED_NAMES = {
    "token_embd.weight": ("model.embed_tokens.weight", False),
    "output_norm.weight": ("model.norm.weight", True),
    "blk.{}.attn_norm.weight": ("model.layers.{}.input_layernorm.weight", True),
    "blk.{}.attn_q.weight": ("model.layers.{}.self_attn.q_proj.weight", False),
    "blk.{}.attn_k.weight": ("model.layers.{}.self_attn.k_proj.weight", False),
    "blk.{}.attn_v.weight": ("model.layers.{}.self_attn.v_proj.weight", False),
    "blk.{}.attn_output.weight": ("model.layers.{}.self_attn.o_proj.weight", False),
    "blk.{}.post_attention_norm.weight": ("model.layers.{}.post_attention_layernorm.weight", True),
    "blk.{}.ffn_norm.weight": ("model.layers.{}.pre_feedforward_layernorm.weight", True),
    "blk.{}.ffn_gate.weight": ("model.layers.{}.mlp.gate_proj.weight", False),
    "blk.{}.ffn_up.weight": ("model.layers.{}.mlp.up_proj.weight", False),
    "blk.{}.ffn_down.weight": ("model.layers.{}.mlp.down_proj.weight", False),
    "blk.{}.post_ffw_norm.weight": ("model.layers.{}.post_feedforward_layernorm.weight", True),
}


def save_checkpoint(directory, model_type="bpe", **overrides):
    model = random_model(BASE, **overrides)
    model.save_pretrained(directory)
    tokenizer = train_tokenizer(TEXTS, model_type=model_type, vocab_size=300, progress=False)
    tokenizer.save_pretrained(directory)
    return model, tokenizer


def field(reader, key):
    value = reader.fields[key]
    if len(value.types) > 1 or value.types[0].name == "ARRAY":
        return [value.contents(i) for i in range(len(value.data))]
    return value.contents()


def expected_tensors(model):
    """gguf name -> float32 array llama.cpp should hold, from our weights and the spec above."""
    state = model.state_dict()
    query_fold = model.config.query_pre_attn_scalar ** -0.5 / model.config.head_dim ** -0.5
    expected = {}
    for gguf_name, (our_name, is_norm) in EXPECTED_NAMES.items():
        for layer in range(model.config.n_layer) if "{}" in gguf_name else [None]:
            tensor = state[our_name.format(layer)].float()
            tensor = 1.0 + tensor if is_norm else tensor
            if ".attn_q." in gguf_name:
                tensor = tensor * query_fold
            expected[gguf_name.format(layer)] = tensor.numpy()
    return expected


@pytest.fixture(scope="module", params=list(CONFIGS))
def checkpoint(request, tmp_path_factory):
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp(request.param)
    model, tokenizer = save_checkpoint(directory / "ours", **CONFIGS[request.param])
    return request.param, model, tokenizer, directory


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16", "q8_0"])
def test_every_tensor_is_ours(checkpoint, dtype):
    _, model, _, directory = checkpoint
    reader = GGUFReader(export_gguf(directory / "ours", directory / f"model-{dtype}.gguf", dtype))
    expected = expected_tensors(model)
    assert sorted(t.name for t in reader.tensors) == sorted(expected)
    wanted_type = {"f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0"}[dtype]
    for tensor in reader.tensors:
        reference = expected[tensor.name]
        assert tuple(int(n) for n in tensor.shape) == tuple(reversed(reference.shape)), tensor.name  # ggml order
        assert tensor.tensor_type.name == ("F32" if reference.ndim == 1 else wanted_type), tensor.name
        values = dequantize(tensor.data, tensor.tensor_type).reshape(reference.shape)
        if tensor.tensor_type == GGMLQuantizationType.F32:
            assert np.array_equal(values, reference), tensor.name
        elif tensor.tensor_type == GGMLQuantizationType.Q8_0:
            # one scale d = max|x| / 127 per 32 values, stored in float16: half a step, plus d's own rounding
            # (2^-11 relative) times up to 127 steps
            step = np.abs(reference.reshape(-1, 32)).max(axis=1, keepdims=True) / 127
            bound = step * (0.5 + 127 * 2.0**-11) + 1e-7
            assert np.all(np.abs(values - reference).reshape(-1, 32) <= bound), tensor.name
            assert np.abs(values - reference).max() > 0  # really quantized
        else:
            rounded = torch.from_numpy(reference).to(getattr(torch, {"F16": "float16", "BF16": "bfloat16"}[
                tensor.tensor_type.name])).float().numpy()
            assert np.array_equal(values, rounded), tensor.name


def test_metadata(checkpoint, tmp_path):
    name, model, tokenizer, directory = checkpoint
    config = model.config
    reader = GGUFReader(export_gguf(directory / "ours", tmp_path / "model.gguf"))
    assert field(reader, "general.architecture") == "gemma2"
    assert field(reader, "general.file_type") == 0  # all f32
    expected = {
        "gemma2.context_length": 64, "gemma2.embedding_length": 64, "gemma2.block_count": 3,
        "gemma2.feed_forward_length": 96, "gemma2.attention.head_count": 4,
        "gemma2.attention.head_count_kv": config.num_key_value_heads, "gemma2.attention.key_length": 24,
        "gemma2.attention.value_length": 24, "gemma2.rope.freq_base": config.rope_theta,
        "gemma2.attention.layer_norm_rms_epsilon": pytest.approx(1e-6),
    }
    if name == "gemma2_like":
        expected.update({"gemma2.attn_logit_softcapping": 5.0, "gemma2.final_logit_softcapping": 3.0,
                         "gemma2.attention.sliding_window": 4})
    else:  # neutral values: llama.cpp always caps and always slides the even layers
        expected.update({"gemma2.attn_logit_softcapping": 2.0**20, "gemma2.final_logit_softcapping": 2.0**20,
                         "gemma2.attention.sliding_window": 2**20})
    for key, value in expected.items():
        assert field(reader, key) == value, key

    assert field(reader, "tokenizer.ggml.model") == "gpt2" and field(reader, "tokenizer.ggml.pre") == "gpt-2"
    tokens = field(reader, "tokenizer.ggml.tokens")
    types = field(reader, "tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == VOCAB
    vocab = tokenizer.get_vocab()
    assert all(tokens[index] == token for token, index in vocab.items())
    assert tokens[len(vocab):] == [f"[PAD{i}]" for i in range(len(vocab), VOCAB)] and set(types[len(vocab):]) == {5}
    specials = {tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<unk>", "<pad>")}
    assert {i for i, t in enumerate(types) if t == 3} == specials
    assert {i for i, t in enumerate(types[:len(vocab)]) if t == 1} == set(range(len(vocab))) - specials
    backend_merges = tokenizer.backend_tokenizer.to_str()
    merges = field(reader, "tokenizer.ggml.merges")
    assert merges and all(f'"{a}","{b}"' in backend_merges.replace(", ", ",") or f'"{a} {b}"' in backend_merges
                          for a, b in (m.split(" ") for m in merges[:50]))
    assert field(reader, "tokenizer.ggml.eos_token_id") == tokenizer.eos_token_id
    assert field(reader, "tokenizer.ggml.padding_token_id") == tokenizer.pad_token_id
    assert field(reader, "tokenizer.ggml.unknown_token_id") == tokenizer.unk_token_id
    assert field(reader, "tokenizer.ggml.add_bos_token") is False


def test_read_as_llama_cpp_does_the_logits_are_ours(checkpoint, tmp_path):
    """Rebuild a model from the file with llama.cpp's gemma2 semantics and compare logits."""
    _, model, _, directory = checkpoint
    reader = GGUFReader(export_gguf(directory / "ours", tmp_path / "model.gguf"))
    config = ModernGPT2Config(
        **{**BASE, "num_key_value_heads": field(reader, "gemma2.attention.head_count_kv")},
        query_pre_attn_scalar=field(reader, "gemma2.attention.key_length"),  # llama.cpp: head_dim, always
        attn_logit_softcapping=field(reader, "gemma2.attn_logit_softcapping"),
        final_logit_softcapping=field(reader, "gemma2.final_logit_softcapping"),
        sliding_window=field(reader, "gemma2.attention.sliding_window"),  # even layers slide
        rope_theta=field(reader, "gemma2.rope.freq_base"),
    )
    rebuilt = ModernGPT2ForCausalLM(config).eval()
    state = {}
    for tensor in reader.tensors:
        for gguf_name, (our_name, is_norm) in EXPECTED_NAMES.items():
            prefix, _, suffix = gguf_name.partition("{}")
            if tensor.name.startswith(prefix) and tensor.name.endswith(suffix):
                layer = tensor.name[len(prefix):len(tensor.name) - len(suffix)]
                if ("{}" in gguf_name) == layer.isdigit() and (layer.isdigit() or tensor.name == gguf_name):
                    values = torch.from_numpy(np.array(tensor.data)).reshape(tuple(reversed(tensor.shape.tolist())))
                    state[our_name.format(layer)] = values - 1.0 if is_norm else values
    loaded = rebuilt.load_state_dict(state, strict=False)
    assert loaded.missing_keys == ["lm_head.weight"] and not loaded.unexpected_keys  # the head is tied
    input_ids = torch.randint(3, VOCAB, (1, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(input_ids).logits
        diff = (rebuilt(input_ids).logits - expected).abs().max().item()
    # float32 rounding of 1 + w and of the folded query weights
    print(f"max |logit diff| of the model rebuilt from the GGUF file: {diff:.2e}")
    assert diff < 5e-5


def test_unigram_tokenizer(tmp_path):
    _, tokenizer = save_checkpoint(tmp_path / "ours", model_type="unigram", **CONFIGS["gemma2_like"])
    reader = GGUFReader(export_gguf(tmp_path / "ours", tmp_path / "model.gguf"))
    assert field(reader, "tokenizer.ggml.model") == "t5"
    assert field(reader, "tokenizer.ggml.add_space_prefix") is False
    tokens, types = field(reader, "tokenizer.ggml.tokens"), field(reader, "tokenizer.ggml.token_type")
    scores = field(reader, "tokenizer.ggml.scores")
    pieces = dict(__import__("json").loads(tokenizer.backend_tokenizer.to_str())["model"]["vocab"])
    for index, token in enumerate(tokens[:len(tokenizer)]):
        assert scores[index] == pytest.approx(pieces.get(token, 0.0), abs=1e-6)
        assert (types[index] == 6) == (token.startswith("<0x") and len(token) == 6)
    assert sum(t == 6 for t in types) == 256


@pytest.mark.parametrize("overrides, message", [
    (dict(use_per_layer_embedding=True, per_layer_vocab_size=32, per_layer_hidden_size=8), "per-layer embeddings"),
    (dict(tie_word_embeddings=False), "tie_word_embeddings=false"),
    (dict(sliding_window=4, layer_types=["full_attention", "sliding_attention", "full_attention"]),
     "slides on the even layers only"),
    (dict(activation_function="silu"), "activation_function='silu'"),
])
def test_settings_llama_cpp_would_ignore_are_refused(tmp_path, capsys, overrides, message):
    save_checkpoint(tmp_path / "ours", **overrides)
    capsys.readouterr()
    code = cli.main(["export", "--format", "gguf", str(tmp_path / "ours"), str(tmp_path / "out.gguf")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.gguf").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    with pytest.raises(UserError, match="export --format gemma2|trust_remote_code"):
        export_gguf(tmp_path / "ours", tmp_path / "out.gguf")


def test_canonical_flags_write_the_same_file_as_the_positional_spelling(checkpoint, capsys):
    """`--model SRC --output_file OUT --outtype T` = `SRC OUT --dtype T` = `--output OUT --dtype <long name>`."""
    name, _, _, directory = checkpoint
    src = str(directory / "ours")
    spellings = {
        "a.gguf": ["--model", src, "--output_file", str(directory / "a.gguf"), "--outtype", "bf16"],
        "b.gguf": [src, str(directory / "b.gguf"), "--dtype", "bf16"],
        "c.gguf": ["--model", src, "--output", str(directory / "c.gguf"), "--dtype", "bfloat16"],
    }
    for out, argv in spellings.items():
        assert cli.main(["export", "--format", "gguf", *argv]) == 0, argv
    capsys.readouterr()
    assert len({(directory / out).read_bytes() for out in spellings}) == 1
    assert {t.tensor_type.name for t in GGUFReader(directory / "a.gguf").tensors} == {"F32", "BF16"}

    for argv, message in [
        (["--outtype", "q4_k", src, str(directory / "d.gguf")], "--outtype q4_k is not available for --format gguf"),
        (["--output_file", str(directory / "d.gguf"), src, str(directory / "e.gguf")], "not both"),
    ]:
        assert cli.main(["export", "--format", "gguf", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    assert not (directory / "d.gguf").exists() and not (directory / "e.gguf").exists()
