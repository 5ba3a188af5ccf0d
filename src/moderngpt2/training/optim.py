"""AdamW parameter groups: weight decay only on matrices, a separate learning rate for per-layer parameters.

Weight decay pulls weights towards zero; that regularises the matrices of linear maps, but only distorts norm
gains and biases (one number per channel, nothing to regularise), embedding tables (a rare token's row would
shrink just for being rare) and the per-channel mixing logits of the `gated` per-layer combination (gains
too). Per-layer parameters get their own groups so `--per-layer-learning-rate-scale` can scale their rate.
"""

from torch import nn

from ..engines import logical_shape

# Name fragments of the per-layer embedding machinery (module names of modeling_moderngpt2).
PER_LAYER_NAME_PARTS = ("embed_tokens_per_layer", "per_layer_projection", "per_layer_gate")
# 2-D but not a matrix of a linear map: per-layer, per-channel sigmoid logits of the `gated` combination.
GAIN_LIKE_NAME_SUFFIXES = ("gate_logits",)
GROUP_ORDER = ("decay", "no_decay", "per_layer_decay", "per_layer_no_decay")


def is_per_layer_parameter(name: str) -> bool:
    return any(part in name.split(".") for part in PER_LAYER_NAME_PARTS)


def decayed_parameter_names(model: nn.Module) -> set[str]:
    """Names of the parameters weight decay applies to: matrices of linear maps, never embeddings or gains."""
    embedding_params = {
        id(param) for module in model.modules() if isinstance(module, nn.Embedding) for param in module.parameters()
    }
    return {
        name
        for name, param in model.named_parameters()
        if len(logical_shape(param)) >= 2
        and id(param) not in embedding_params
        and not name.endswith(GAIN_LIKE_NAME_SUFFIXES)
    }


def group_of(name: str, decayed: set[str]) -> str:
    return ("per_layer_" if is_per_layer_parameter(name) else "") + ("decay" if name in decayed else "no_decay")


def parameter_group_names(model: nn.Module) -> dict[str, list[str]]:
    """{group: trainable parameter names}, groups in the order `build_parameter_groups` creates them."""
    decayed = decayed_parameter_names(model)
    groups = {key: [] for key in GROUP_ORDER}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups[group_of(name, decayed)].append(name)
    return {key: names for key, names in groups.items() if names}


def build_parameter_groups(model: nn.Module, learning_rate: float, weight_decay: float,
                           per_layer_learning_rate_scale: float = 1.0) -> list[dict]:
    """Up to four AdamW groups: (main | per-layer) x (decay | no decay); frozen parameters are left out.

    The first group is the main decayed one, so the learning rate the Trainer logs (group 0's) is the base one.
    Each group carries a `name` so its role can be read back from the optimizer (DeepSpeed's included).
    """
    params = dict(model.named_parameters())
    groups = []
    for key, names in parameter_group_names(model).items():
        scale = per_layer_learning_rate_scale if key.startswith("per_layer_") else 1.0
        groups.append({
            "name": key,
            "params": [params[name] for name in names],
            "weight_decay": 0.0 if key.endswith("no_decay") else weight_decay,
            "lr": learning_rate * scale,
        })
    return groups


def freeze_per_layer_embedding(model: nn.Module) -> int:
    """Stop training the per-layer table; returns how many parameters were frozen."""
    frozen = 0
    for name, param in model.named_parameters():
        if "embed_tokens_per_layer" in name.split("."):
            param.requires_grad_(False)
            frozen += param.numel()
    return frozen
