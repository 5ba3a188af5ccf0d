"""FLOPs of a training step and model FLOPs utilisation (MFU): one formula for `train`'s logs and `bench train`."""

import torch
from torch import nn


def matmul_parameter_count(model: nn.Module) -> int:
    """Parameters that take part in a matrix multiply for every token.

    Embedding tables are lookups and cost no FLOPs, except that a tied LM head multiplies by the input
    embedding matrix, so it is counted back in.
    """
    embedding_weights = {id(module.weight) for module in model.modules() if isinstance(module, nn.Embedding)}
    count = sum(p.numel() for p in model.parameters() if id(p) not in embedding_weights)
    head = model.get_output_embeddings()
    if head is not None and id(head.weight) in embedding_weights:
        count += head.weight.numel()
    return count


def training_flops_per_token(matmul_params: int, n_layer: int, attention_width: int, seq_len: int) -> int:
    """6·N (forward 2·N, backward 4·N) plus 12·L·H·S for the attention scores and their weighted sum.

    H is the query width (heads × head_dim). Counting full, not causal, attention is the usual convention
    (PaLM, nanoGPT), so the MFU numbers compare with published ones.
    """
    return 6 * matmul_params + 12 * n_layer * attention_width * seq_len


def flops_per_token(config, sequence_length: int) -> float:
    """Training FLOPs per token of a model of this config, counted on a weightless (meta) copy.

    Counting on a copy keeps the number right whatever engine holds the real weights (ZeRO-3 and FSDP
    shards report partial sizes).
    """
    from .modeling_moderngpt2 import ModernGPT2ForCausalLM

    with torch.device("meta"):
        meta = ModernGPT2ForCausalLM(config)
    attention_width = config.num_attention_heads * config.head_dim
    return training_flops_per_token(matmul_parameter_count(meta), config.num_hidden_layers, attention_width,
                                    sequence_length)


def model_flops_utilization(tokens_per_s: float, flops_per_token: int, peak_tflops: float | None) -> float | None:
    if not peak_tflops:
        return None
    return tokens_per_s * flops_per_token / (peak_tflops * 1e12)
