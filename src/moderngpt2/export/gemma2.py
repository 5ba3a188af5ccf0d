"""``moderngpt2 export --format gemma2``: a ModernGPT2 checkpoint as a transformers ``Gemma2ForCausalLM`` directory.

Without per-layer embeddings ModernGPT2 is Gemma2 with a few settings free (softcaps off, any layer pattern,
any query scale), all of which Gemma2's config can state. The export is the converter (`convert.py`) run
backwards: the same field and tensor maps (`gemma2_mapping.py`), the same shard-by-shard copy, the same
all-or-nothing write. The result needs no remote code, so every engine that runs Gemma2 (vLLM, TGI, MLX, llama.cpp's converter) runs it.
"""

import json
from pathlib import Path

import torch

from ..convert import check_tensor_names, shard_files, staged_output, stored_dtype, write_shards
from ..errors import UserError
from ..fileio import write_json
from ..gemma2_mapping import gemma2_config_kwargs, read_checkpoint_config, to_gemma2_key
from .hub_files import save_generation_config, save_portable_tokenizer

PER_LAYER_REFUSAL = (
    "per-layer embeddings (use_per_layer_embedding=true) have no equivalent in Gemma2 or any engine's Gemma2 "
    "architecture; share the checkpoint directory itself (it loads with trust_remote_code=True, see docs/sharing.md)"
)


def read_moderngpt2_config(src: Path):
    """SRC/config.json as a ``ModernGPT2Config``; UserError for anything else."""
    from ..configuration_moderngpt2 import ModernGPT2Config

    return read_checkpoint_config(src, ModernGPT2Config, "moderngpt2", "ModernGPT2",
                                  "give a ModernGPT2 checkpoint directory (a training run's final/ folder)")


def check_gemma2_expressible(config) -> None:
    """UserError naming the first setting a Gemma2 model cannot reproduce, and what to do about it."""
    if config.use_per_layer_embedding:
        raise UserError(PER_LAYER_REFUSAL)
    if config.n_embd % config.n_head:
        raise UserError(
            f"n_embd={config.n_embd} is not a multiple of n_head={config.n_head}, which transformers' Gemma2Config "
            "refuses (even though head_dim is free); share the checkpoint itself with trust_remote_code=True"
        )


def gemma2_config(config, dtype: torch.dtype):
    """The ``Gemma2Config`` of the same network.

    A model without sliding layers still gets a window (its context length): Gemma2 builds a sliding mask
    for every forward, and no full-attention layer reads it.
    """
    from transformers import Gemma2Config

    kwargs = gemma2_config_kwargs(config)
    if kwargs["sliding_window"] is None:
        kwargs["sliding_window"] = config.n_positions
    kwargs["rope_parameters"] = {"rope_type": "default", "rope_theta": float(config.rope_theta)}
    kwargs["use_cache"] = True  # a checkpoint saved mid-training says false; the export is for inference
    exported = Gemma2Config(attention_bias=False, **kwargs)
    exported.architectures = ["Gemma2ForCausalLM"]
    exported.dtype = dtype
    return exported


def gemma2_tensor_names(src: Path, files: list[str], exported_config) -> dict[str, str]:
    """ModernGPT2 -> Gemma2 tensor names, checked name by name and shape by shape against a Gemma2 model."""
    from transformers import Gemma2ForCausalLM

    with torch.device("meta"):
        reference = Gemma2ForCausalLM(exported_config)
    return check_tensor_names(src, files, reference, to_gemma2_key)


def write_gemma2_config(exported_config, out: Path) -> None:
    """config.json, plus the top-level `rope_theta` that transformers 4.x reads (5.x reads `rope_parameters`)."""
    exported_config.save_pretrained(out)
    path = out / "config.json"
    data = json.loads(path.read_text())
    data.setdefault("rope_theta", exported_config.rope_parameters["rope_theta"])
    write_json(path, data, sort_keys=True)


def load_checkpoint_tokenizer(src: Path):
    """The tokenizer saved next to the weights, or None when there is none."""
    if not (src / "tokenizer.json").is_file() and not (src / "tokenizer_config.json").is_file():
        return None
    from ..tokenization import load_tokenizer

    return load_tokenizer(str(src))


def gemma2_model_card(config, src: Path) -> str:
    """README.md of the export: how to load it without remote code, its size, and the source's training record."""
    from ..parameter_counts import count_parameters, format_counts

    lines = ["---", "library_name: transformers", "pipeline_tag: text-generation", "tags: [gemma2, moderngpt2]",
             "---", "", "# Gemma2ForCausalLM exported from ModernGPT2", "",
             "A standard transformers Gemma2 checkpoint (no remote code), written by `moderngpt2 export --format "
             "gemma2`; its logits equal the source ModernGPT2 model's.", "",
             f"- {config.n_layer} layers, hidden size {config.n_embd}, {config.n_head} query / "
             f"{config.num_key_value_heads} key-value heads of size {config.head_dim}, context {config.n_positions}",
             "", "```", format_counts(count_parameters(config)), "```", "", "```python",
             "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
             'model = AutoModelForCausalLM.from_pretrained("PATH")', 'tokenizer = AutoTokenizer.from_pretrained("PATH")',
             "```", ""]
    source_card = src / "README.md"
    if source_card.is_file():
        text = source_card.read_text(encoding="utf-8")
        start, end = text.find("## Training"), text.find("## Use")
        if start >= 0:
            lines.append(text[start:end if end > start else None].rstrip() + "\n")
    return "\n".join(lines)


def export_gemma2(src, dst, dtype: torch.dtype | None = None, overwrite: bool = False) -> Path:
    """Write the ModernGPT2 checkpoint ``src`` as a Gemma2ForCausalLM directory ``dst``."""
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise UserError(f"{src} is not a directory; give a ModernGPT2 checkpoint directory")
    config = read_moderngpt2_config(src)
    check_gemma2_expressible(config)
    files = shard_files(src)
    exported = gemma2_config(config, dtype or stored_dtype(src, files))
    names = gemma2_tensor_names(src, files, exported)
    tokenizer = load_checkpoint_tokenizer(src)
    with staged_output(dst, overwrite) as staging:
        write_shards(src, files, names, staging, dtype)
        write_gemma2_config(exported, staging)
        save_generation_config(exported, staging, tokenizer)
        if tokenizer is not None:
            save_portable_tokenizer(tokenizer, staging, config.n_positions)
        (staging / "README.md").write_text(gemma2_model_card(config, src), encoding="utf-8")
    return dst
