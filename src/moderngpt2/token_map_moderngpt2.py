"""The per-layer token map of ModernGPT2: which row of the per-layer table each main token id reads.

The map is a persistent buffer of the model (saved with the weights), so `generate`, pipelines and evaluation
derive per-layer ids from token ids without anything extra. This module imports only torch, so it travels next
to a checkpoint with the modeling file.
"""

import torch


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
