"""Make OUTPUT/final a directory that can be uploaded to a model hub as it is.

The Trainer's save leaves the model as it was trained: `use_cache: false`, a tokenizer without a length
limit, and a pickle of the training arguments. The final directory instead gets a model card (README.md),
a generation config with the end and padding ids, `use_cache: true`, the tokenizer's `model_max_length`
set to the context length (saved so that transformers 4.x loads it too) and no pickle; the training
state stays in the checkpoints.
"""

import json
import os
import shlex

from ..export.hub_files import save_generation_config, save_portable_tokenizer
from ..fileio import write_json
from ..metrics import perplexity
from ..parameter_counts import count_parameters, format_counts

PICKLES = ("training_args.bin",)


def held_out_perplexity(log_history: list[dict]) -> tuple[float, int] | None:
    """(perplexity, step) of the last evaluation, or None when the run never evaluated."""
    evaluations = [entry for entry in log_history if "eval_loss" in entry]
    if not evaluations:
        return None
    last = evaluations[-1]
    return perplexity(last["eval_loss"]), last.get("step")


def model_card(config, command: str, data_summary: str, tokens_seen: int, steps: int, perplexity) -> str:
    """README.md of the final model: what it is, what it saw, how well it does, and how to reproduce it."""
    kind = "with Gemma3n-style per-layer embeddings" if config.use_per_layer_embedding else "(Gemma2-compatible)"
    sliding = "sliding_attention" in config.layer_types
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags: [moderngpt2, causal-lm]",
        "---",
        "",
        f"# ModernGPT2 {kind}",
        "",
        "A GPT-2-class decoder with Gemma2 internals, pretrained with `moderngpt2 train`.",
        "",
        "## Architecture",
        "",
        f"- {config.n_layer} layers, hidden size {config.n_embd}, {config.n_head} query heads and "
        f"{config.num_key_value_heads} key/value heads of size {config.head_dim}, MLP width {config.n_inner} "
        f"({config.activation_function} GeGLU)",
        f"- context length {config.n_positions}, vocabulary {config.vocab_size}, RoPE base {config.rope_theta:g}",
        f"- attention softcap {config.attn_logit_softcapping}, final logit softcap {config.final_logit_softcapping}, "
        f"sliding window {config.sliding_window if sliding else 'none'}",
    ]
    if config.use_per_layer_embedding:
        lines.append(f"- per-layer embeddings: {config.per_layer_vocab_size} x {config.n_layer} x "
                     f"{config.per_layer_hidden_size}, combined by `{config.per_layer_combination_method}`")
    lines += ["", "## Parameters", "", "```", format_counts(count_parameters(config)), "```", "",
              "## Training", "", f"- data: {data_summary}", f"- optimizer steps: {steps:,}",
              f"- tokens seen: {tokens_seen:,}"]
    if perplexity is not None:
        lines.append(f"- held-out perplexity: {perplexity[0]:.4f} (step {perplexity[1]})")
    else:
        lines.append("- held-out perplexity: not evaluated")
    lines += ["", "Command:", "", "```bash", command, "```", "", "## Use", "", "```python",
              "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
              'model = AutoModelForCausalLM.from_pretrained("PATH", trust_remote_code=True)',
              'tokenizer = AutoTokenizer.from_pretrained("PATH")', "```", ""]
    if not config.use_per_layer_embedding:
        lines += ["`moderngpt2 export --format gemma2 PATH OUT` turns it into a plain Gemma2 model for engines "
                  "that run no remote code (vLLM, TGI, llama.cpp via `--format gguf`).", ""]
    return "\n".join(lines)


def finalize(final_dir: str, model, tokenizer, command_argv: list[str], data_summary: str, tokens_seen: int,
             steps: int, log_history: list[dict]) -> None:
    """Turn the Trainer's save in `final_dir` into a hub-ready directory (main process only)."""
    config = model.config
    config_path = os.path.join(final_dir, "config.json")
    with open(config_path, encoding="utf-8") as handle:
        saved = json.load(handle)
    saved["use_cache"] = True  # training switches the cache off; inference wants it
    write_json(config_path, saved, sort_keys=True)
    save_generation_config(config, final_dir, tokenizer)
    if tokenizer is not None:
        save_portable_tokenizer(tokenizer, final_dir, config.n_positions)
    for name in PICKLES:
        path = os.path.join(final_dir, name)
        if os.path.exists(path):
            os.remove(path)
    command = shlex.join(["moderngpt2", "train", *command_argv])
    card = model_card(config, command, data_summary, tokens_seen, steps, held_out_perplexity(log_history))
    with open(os.path.join(final_dir, "README.md"), "w", encoding="utf-8") as handle:
        handle.write(card)
