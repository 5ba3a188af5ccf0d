"""``moderngpt2 export --format gguf``: a ModernGPT2 checkpoint as a GGUF file that llama.cpp runs as ``gemma2``.

What llama.cpp's gemma2 graph does, read from its source, and how each of our settings is carried:

- RMSNorm multiplies by the stored weight: our `(1 + w)` gains are stored as `1 + w`.
- Attention logits and final logits are always softcapped: a feature we switch off gets the neutral cap
  2^20, where `c * tanh(x / c)` returns x exactly in float32 for |x| < ~400 (and 1/c is exact).
- The query scale is fixed to `head_dim ** -0.5` (`(n_embd / n_head) ** -0.5` for a 46-layer model):
  any other `query_pre_attn_scalar` is folded into the q_proj weights, which scales the same scores.
- Sliding layers are the even ones (sliding, full, sliding, ...): that pattern, or no sliding layer at all
  (then the window is the neutral 2^20), is accepted; any other pattern is refused.
- The output layer is always the token embedding: an untied head is refused.
- The MLP activation is GELU (tanh approximation); rope_theta is read from `rope.freq_base`.
"""

import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from ..convert import shard_files
from ..errors import UserError
from .gemma2 import PER_LAYER_REFUSAL, load_checkpoint_tokenizer, read_moderngpt2_config
from .gguf_vocab import gguf_vocab

NEUTRAL_CAP = float(2**20)
NEUTRAL_WINDOW = 2**20
GELU_TANH = ("gelu_pytorch_tanh", "gelu_new")
# Our tensor name (after `model.`) -> (gguf tensor kind, whether it is an RMSNorm gain stored as 1 + w).
LAYER_TENSORS = {
    "input_layernorm": ("ATTN_NORM", True),
    "self_attn.q_proj": ("ATTN_Q", False),
    "self_attn.k_proj": ("ATTN_K", False),
    "self_attn.v_proj": ("ATTN_V", False),
    "self_attn.o_proj": ("ATTN_OUT", False),
    "post_attention_layernorm": ("ATTN_POST_NORM", True),
    "pre_feedforward_layernorm": ("FFN_PRE_NORM", True),
    "mlp.gate_proj": ("FFN_GATE", False),
    "mlp.up_proj": ("FFN_UP", False),
    "mlp.down_proj": ("FFN_DOWN", False),
    "post_feedforward_layernorm": ("FFN_POST_NORM", True),
}
GLOBAL_TENSORS = {"model.embed_tokens.weight": ("TOKEN_EMBD", False), "model.norm.weight": ("OUTPUT_NORM", True)}


def check_llama_cpp_expressible(config) -> None:
    """UserError naming the first setting llama.cpp's gemma2 would silently run differently."""
    if config.use_per_layer_embedding:
        raise UserError(PER_LAYER_REFUSAL)
    if not config.tie_word_embeddings:
        raise UserError("tie_word_embeddings=false: llama.cpp's gemma2 always uses the token embedding as the output "
                        "layer; export --format gemma2 instead and serve it with vLLM or transformers")
    sliding = [t == "sliding_attention" for t in config.layer_types]
    if any(sliding) and sliding != [i % 2 == 0 for i in range(config.n_layer)]:
        raise UserError(f"layer_types {config.layer_types}: llama.cpp's gemma2 slides on the even layers only "
                        "(sliding, full, sliding, ...); export --format gemma2 instead for vLLM or transformers")
    if config.activation_function not in GELU_TANH:
        raise UserError(f"activation_function={config.activation_function!r}: llama.cpp's gemma2 MLP uses GELU with "
                        "the tanh approximation (gelu_pytorch_tanh); export --format gemma2 instead")


def llama_cpp_query_scale(config) -> float:
    """The query scale llama.cpp's gemma2 applies (it derives it from the shape, not from the file)."""
    return (config.n_embd // config.n_head if config.n_layer == 46 else config.head_dim) ** -0.5


def gguf_tensors(src: Path, files: list[str], config):
    """(gguf name, float32 array) for every tensor, transformed to what llama.cpp's gemma2 computes with."""
    import gguf

    query_fold = config.query_pre_attn_scalar**-0.5 / llama_cpp_query_scale(config)
    for file in files:
        with safe_open(src / file, framework="pt") as shard:
            for key in shard.keys():
                kind, is_norm = _gguf_kind(key)
                if kind is None:
                    continue
                tensor = shard.get_tensor(key).to(torch.float32)
                if is_norm:
                    tensor = 1.0 + tensor
                if kind == "ATTN_Q" and not math.isclose(query_fold, 1.0, rel_tol=0, abs_tol=1e-12):
                    tensor = tensor * query_fold
                name = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR[kind]].format(bid=_layer_index(key)) + ".weight"
                yield name, tensor.numpy()


def _layer_index(key: str):
    parts = key.split(".")
    return int(parts[2]) if parts[1] == "layers" else None


def _gguf_kind(key: str):
    """(gguf tensor kind, is an RMSNorm gain) of one of our tensor names; (None, False) for a tied lm_head."""
    if key in GLOBAL_TENSORS:
        return GLOBAL_TENSORS[key]
    if key == "lm_head.weight":
        return None, False
    parts = key.split(".")
    inner = ".".join(parts[3:-1])
    if parts[:2] == ["model", "layers"] and parts[-1] == "weight" and inner in LAYER_TENSORS:
        return LAYER_TENSORS[inner]
    raise UserError(f"tensor '{key}' has no place in llama.cpp's gemma2 architecture")


def stored_type(array: np.ndarray, dtype: str):
    """(data to write, its GGML type): 1-D tensors stay float32; q8_0 needs rows that are multiples of 32."""
    import gguf
    from gguf.quants import quantize

    types = gguf.GGMLQuantizationType
    wanted = {"f32": types.F32, "f16": types.F16, "bf16": types.BF16, "q8_0": types.Q8_0}[dtype]
    if array.ndim == 1 or wanted == types.F32:
        return array, types.F32
    if wanted == types.Q8_0 and array.shape[-1] % 32:
        wanted = types.F16  # llama.cpp's own converter falls back the same way
    return quantize(array, wanted), wanted


def add_hyperparameters(writer, config) -> None:
    """The gemma2.* keys llama.cpp reads, with neutral values for what our config switches off."""
    writer.add_context_length(config.n_positions)
    writer.add_embedding_length(config.n_embd)
    writer.add_block_count(config.n_layer)
    writer.add_feed_forward_length(config.n_inner)
    writer.add_head_count(config.n_head)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(float(config.rope_theta))
    writer.add_attn_logit_softcapping(float(config.attn_logit_softcapping or NEUTRAL_CAP))
    writer.add_final_logit_softcapping(float(config.final_logit_softcapping or NEUTRAL_CAP))
    has_sliding = "sliding_attention" in config.layer_types
    writer.add_sliding_window(config.sliding_window if has_sliding else NEUTRAL_WINDOW)


def add_vocabulary(writer, vocab) -> None:
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    if vocab.merges is not None:
        writer.add_token_merges(vocab.merges)
    for role, token_id in vocab.special_ids.items():
        getattr(writer, f"add_{role}_token_id")(token_id)
    writer.add_add_bos_token(False)  # our tokenizers add no BOS/EOS; the model never saw them added
    writer.add_add_eos_token(False)
    if vocab.model == "t5":
        writer.add_add_space_prefix(False)
        writer.add_remove_extra_whitespaces(False)


FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0"}


def export_gguf(src, out, dtype: str = "f32", overwrite: bool = False) -> Path:
    """Write the ModernGPT2 checkpoint ``src`` as the GGUF file ``out``; returns ``out``."""
    import gguf

    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise UserError(f"{src} is not a directory; give a ModernGPT2 checkpoint directory")
    if out.exists() and not overwrite:
        raise UserError(f"{out} exists; choose another output file or pass --overwrite")
    config = read_moderngpt2_config(src)
    check_llama_cpp_expressible(config)
    tokenizer = load_checkpoint_tokenizer(src)
    if tokenizer is None:
        raise UserError(f"{src} has no tokenizer (tokenizer.json); a GGUF file carries its tokenizer, so save the "
                        "tokenizer next to the weights first")
    vocab = gguf_vocab(tokenizer, config.vocab_size)
    for warning in vocab.warnings:
        print(f"moderngpt2 export: warning: {warning}")
    files = shard_files(src)

    out.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(handle)
    try:
        writer = gguf.GGUFWriter(staging, "gemma2")
        writer.add_name(src.resolve().name)
        writer.add_file_type(int(gguf.LlamaFileType[FILE_TYPES[dtype]]))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        add_hyperparameters(writer, config)
        add_vocabulary(writer, vocab)
        for name, array in gguf_tensors(src, files, config):
            data, ggml_type = stored_type(array, dtype)
            writer.add_tensor(name, data, raw_dtype=ggml_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(staging, out)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return out
