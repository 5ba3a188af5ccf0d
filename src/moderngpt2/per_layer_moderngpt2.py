"""Gemma3n-style per-layer embeddings (PLE) of ModernGPT2: the modules and the per-layer token map.

With B the batch, S the sequence, L layers, H hidden and d the per-layer width: `ModernGPT2PerLayerEmbedding`
looks up (B, S, L, d) per-layer embeddings, `ModernGPT2PerLayerProjection` combines them with a projection of
the main embeddings, and each layer's `ModernGPT2PerLayerGate` adds its slice to the residual stream. The token
map (which per-layer row each main token id reads) is a persistent buffer of the model, saved with the weights,
so `generate`, pipelines and evaluation need nothing extra. The RMSNorms are the model's, passed in.

This module imports only torch and transformers, so it travels next to a checkpoint with the modeling file.
"""

import torch
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN


def scaled(tensor: torch.Tensor, scale: float) -> torch.Tensor:
    """`tensor * scale` with the scale rounded to the activation dtype first, as Gemma2/Gemma3n do (sqrt(768)
    becomes 27.75 in bf16)."""
    return tensor * torch.tensor(scale, dtype=tensor.dtype)


def gemma3n_per_layer_ids(main_ids: torch.Tensor, per_layer_vocab_size: int) -> torch.Tensor:
    """Gemma3n's rule: a main id below per_layer_vocab_size is its own per-layer id, any other id maps to row 0."""
    return torch.where(main_ids < per_layer_vocab_size, main_ids, torch.zeros_like(main_ids))


def default_per_layer_token_map(config) -> torch.Tensor:
    """The map a fresh model starts with: Gemma3n's rule for every main id."""
    return gemma3n_per_layer_ids(torch.arange(config.vocab_size, dtype=torch.long), config.per_layer_vocab_size)


def checked_per_layer_token_map(token_map, vocab_size: int, per_layer_vocab_size: int) -> torch.Tensor:
    """`token_map` as a LongTensor, or a ValueError saying which of length, dtype or range is wrong."""
    token_map = torch.as_tensor(token_map)
    if token_map.dim() != 1 or token_map.shape[0] != vocab_size:
        raise ValueError(
            f"per-layer token map has shape {tuple(token_map.shape)}; it needs one entry per main token id, "
            f"shape ({vocab_size},)"
        )
    if token_map.is_floating_point() or token_map.is_complex() or token_map.dtype == torch.bool:
        raise ValueError(f"per-layer token map must hold integer ids, got dtype {token_map.dtype}")
    low, high = int(token_map.min()), int(token_map.max())
    if low < 0 or high >= per_layer_vocab_size:
        raise ValueError(
            f"per-layer token map holds ids in [{low}, {high}]; they must lie in "
            f"[0, per_layer_vocab_size={per_layer_vocab_size})"
        )
    return token_map.to(torch.long)


def check_per_layer_unk_id(unk_id: int | None, per_layer_vocab_size: int) -> None:
    """A ValueError unless `unk_id` is None or a row of the per-layer table."""
    if unk_id is not None and not (isinstance(unk_id, int) and 0 <= unk_id < per_layer_vocab_size):
        raise ValueError(
            f"per_layer_unk_id={unk_id!r} must be a row of the per-layer table, an integer in "
            f"[0, per_layer_vocab_size={per_layer_vocab_size})"
        )


def per_layer_ids_for_generation(per_layer_input_ids: torch.Tensor, input_ids: torch.Tensor,
                                 inputs_embeds: torch.Tensor | None, token_map: torch.Tensor,
                                 current_length: int) -> torch.Tensor:
    """The last `current_length` per-layer ids of a generation step.

    Explicit ids cover the prompt; the tokens generated after it are mapped through `token_map` like any other.
    """
    total = input_ids.shape[1] + (inputs_embeds.shape[1] if inputs_embeds is not None else 0)
    missing = total - per_layer_input_ids.shape[1]
    if missing > 0:
        new_ids = token_map[input_ids[:, -missing:]].to(per_layer_input_ids.device)
        per_layer_input_ids = torch.cat((per_layer_input_ids, new_ids), dim=1)
    return per_layer_input_ids[:, -current_length:]


def resized_per_layer_token_map(token_map: torch.Tensor, new_size: int, per_layer_vocab_size: int,
                                unk_id: int | None = None) -> torch.Tensor:
    """`token_map` cut or extended to `new_size` main ids.

    Extension rows: `unk_id` when given; else Gemma3n's rule when the map is still Gemma3n's (so the result is
    the default map of the new size); else the map's unknown row, taken to be the row most main ids share (a
    per-layer vocabulary gives each chosen token a row of its own and sends every other token to its unknown row).
    """
    old_size = token_map.shape[0]
    if new_size <= old_size:
        return token_map[:new_size].clone()
    new_ids = torch.arange(old_size, new_size, dtype=torch.long, device=token_map.device)
    old_ids = torch.arange(old_size, dtype=torch.long, device=token_map.device)
    if unk_id is None and torch.equal(token_map, gemma3n_per_layer_ids(old_ids, per_layer_vocab_size)):
        extension = gemma3n_per_layer_ids(new_ids, per_layer_vocab_size)
    else:
        if unk_id is None:
            unk_id = int(torch.bincount(token_map).argmax())  # ties: the lowest row
        extension = torch.full_like(new_ids, unk_id)
    return torch.cat((token_map, extension))


class ModernGPT2PerLayerEmbedding(nn.Embedding):
    """One table of `V_p x (L * d)`: row t holds token t's d-wide embedding for every layer, scaled by sqrt(d)."""

    def __init__(self, config):
        super().__init__(config.per_layer_vocab_size, config.num_hidden_layers * config.per_layer_hidden_size)
        self.num_layers = config.num_hidden_layers
        self.per_layer_hidden_size = config.per_layer_hidden_size

    def forward(self, per_layer_input_ids: torch.Tensor) -> torch.Tensor:
        embeds = scaled(super().forward(per_layer_input_ids), self.per_layer_hidden_size**0.5)
        return embeds.view(*per_layer_input_ids.shape, self.num_layers, self.per_layer_hidden_size)  # (B, S, L, d)


class ModernGPT2PerLayerProjection(nn.Module):
    """Projects the main embeddings to one d-wide input per layer and combines it with the per-layer embeddings.

    P = RMSNorm_d(view(W x_emb * H^-0.5, [B, S, L, d])), then with E the per-layer embeddings:
    `scaled_add`: (P + E) * 2^-0.5 (Gemma3n); `concat`: a per-layer linear 2d -> d on [P; E];
    `gated`: sigmoid(g) * P + (1 - sigmoid(g)) * E with learned per-layer, per-channel logits g.
    Without per-layer embeddings (only `inputs_embeds` given), P alone, as in Gemma3n.
    """

    def __init__(self, config, norm: nn.Module):
        super().__init__()
        self.hidden_size = config.hidden_size
        self.num_layers = config.num_hidden_layers
        self.per_layer_hidden_size = d = config.per_layer_hidden_size
        self.combination_method = config.per_layer_combination_method
        self.proj = nn.Linear(config.hidden_size, self.num_layers * d, bias=False)
        self.norm = norm  # RMSNorm over d
        if self.combination_method == "concat":
            self.combine_weight = nn.Parameter(torch.empty(self.num_layers, 2 * d, d))
        elif self.combination_method == "gated":
            self.gate_logits = nn.Parameter(torch.zeros(self.num_layers, d))

    def forward(self, inputs_embeds: torch.Tensor, per_layer_embeds: torch.Tensor | None) -> torch.Tensor:
        projected = scaled(self.proj(inputs_embeds), self.hidden_size**-0.5)
        projected = self.norm(projected.view(*inputs_embeds.shape[:-1], self.num_layers, -1))  # (B, S, L, d)
        if per_layer_embeds is None:
            return projected
        if self.combination_method == "scaled_add":
            return scaled(projected + per_layer_embeds, 2.0**-0.5)
        if self.combination_method == "concat":
            both = torch.cat((projected, per_layer_embeds), dim=-1)  # (B, S, L, 2d)
            return torch.einsum("bsle,led->bsld", both, self.combine_weight.to(both.dtype))  # (B, S, L, d)
        mix = self.mixing_weights().to(projected.dtype)  # (L, d)
        return mix * projected + (1.0 - mix) * per_layer_embeds

    @torch.no_grad()
    def init_combination(self) -> None:
        """`concat` starts at [I; I] * 2^-0.5, exactly where `scaled_add` is; `gated` at an even mix (sigmoid(0))."""
        if self.combination_method == "concat":
            eye = torch.eye(self.per_layer_hidden_size) * 2.0**-0.5
            init.copy_(self.combine_weight, torch.cat((eye, eye)).expand_as(self.combine_weight))
        elif self.combination_method == "gated":
            init.zeros_(self.gate_logits)

    def mixing_weights(self) -> torch.Tensor | None:
        """`gated` only: sigmoid(g), the share of the projected main embedding per layer and channel, (L, d)."""
        if self.combination_method != "gated":
            return None
        return torch.sigmoid(self.gate_logits)


class ModernGPT2PerLayerGate(nn.Module):
    """h <- h + RMSNorm_H(W_up(act(W_gate h) * p_i)): injects layer i's per-layer input into the residual stream."""

    def __init__(self, config, norm: nn.Module):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.per_layer_hidden_size, bias=False)
        self.up_proj = nn.Linear(config.per_layer_hidden_size, config.hidden_size, bias=False)
        self.norm = norm  # RMSNorm over H
        self.act_fn = ACT2FN[config.per_layer_gate_activation]
        self.dropout = nn.Dropout(config.per_layer_projection_dropout)

    def forward(self, hidden_states: torch.Tensor, per_layer_input: torch.Tensor) -> torch.Tensor:
        gated = self.act_fn(self.gate_proj(hidden_states)) * self.dropout(per_layer_input)  # (B, S, d)
        return hidden_states + self.norm(self.up_proj(gated))
