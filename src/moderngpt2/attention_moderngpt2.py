"""Attention functions of ModernGPT2 and how one is chosen for a forward.

Every function takes transformers' attention signature,

    fn(module, query, key, value, attention_mask, *, scaling, dropout, softcap, sliding_window, **kwargs)
        -> (output, weights | None)

with query `(B, Hq, Q, D)`, key/value `(B, Hkv, K, D)` (Hkv divides Hq: grouped-query attention) and output
`(B, Q, Hq, D)`. They are registered on this file's own `AttentionInterface` instance, `ATTENTION_FUNCTIONS`, as
transformers recommends for a model that overrides its built-in functions: transformers' `sdpa` would drop the
softcap and its flex/flash functions expect its own mask formats. `attention_mask` is an `AttentionMask` (a
description each function turns into the form it runs fastest with); a function registered with transformers'
global interface under any other name (vLLM's Transformers backend) is called with the same signature and a boolean
mask tensor. A function that cannot honour softcap, window or dropout raises instead of dropping it.

Backends: `eager` (reference; any feature; the only one returning weights), `sdpa` (no softcap), `flex_attention`
(softcap via score_mod, compiled on CUDA, no backward on the CPU), `flash_attention_2` (the flash_attn package,
unpadded inputs only). Which one runs is chosen per forward by `select_attention_backend`: its docstring is the
one description of that choice.

This module imports only torch, transformers and its sibling softcap module, so it travels next to a checkpoint
with the modeling file.
"""

import functools
import importlib.util

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_utils import AttentionInterface

from .softcap_moderngpt2 import softcap_tanh_function


class AttentionMask:
    """Which keys each query may see, described by cache slots instead of a dense tensor.

    A query at slot q sees a key at slot k when k <= q, q - k < sliding_window (for windowed layers), the key is
    not padding and, with `document_ids`, both belong to the same document of a packed sequence. A padded query
    still sees itself, so no row is ever fully masked (which would make softmax NaN); its output is never read. Each backend turns this description into the form it runs fastest with (nothing, a
    boolean tensor, a flex BlockMask), built once per forward and shared by the layers of one attention type.
    """

    def __init__(self, query_slots, key_slots, key_valid=None, aligned=False, keys_end_at_queries=False,
                 slot_starts=None, document_ids=None):
        self.query_slots = query_slots  # (Q,) cache slot of each query
        self.key_slots = key_slots  # (K,) cache slot of each key
        self.key_valid = key_valid  # (B, K) bool, False on padding; None when nothing is padded
        self.aligned = aligned  # queries and keys are the same slots (no cache content before them)
        self.keys_end_at_queries = keys_end_at_queries  # keys are contiguous and end at the last query
        self.slot_starts = slot_starts  # (first query slot, first key slot) as ints, when known without a sync
        self.document_ids = document_ids  # (B, Q) document of each position when queries and keys are aligned
        self._built = {}

    def is_plain_causal(self, sliding_window: int | None) -> bool:
        """True when `is_causal=True` of the fused kernels describes this mask exactly."""
        window_is_moot = sliding_window is None or sliding_window >= len(self.query_slots)
        return self.key_valid is None and self.document_ids is None and self.aligned and window_is_moot

    def dense(self, sliding_window: int | None) -> torch.Tensor:
        """Boolean mask `(B or 1, 1, Q, K)`, True where attention is allowed."""
        key = ("dense", sliding_window)
        if key not in self._built:
            q = self.query_slots[:, None]  # (Q, 1)
            k = self.key_slots[None, :]  # (1, K)
            allowed = k <= q
            if sliding_window is not None:
                allowed = allowed & (q - k < sliding_window)
            allowed = allowed[None]  # (1, Q, K)
            if self.document_ids is not None:
                allowed = allowed & (self.document_ids[:, :, None] == self.document_ids[:, None, :])  # (B, Q, K)
            if self.key_valid is not None:
                allowed = allowed & (self.key_valid[:, None, :] | (k == q)[None])  # (B, Q, K)
            self._built[key] = allowed[:, None]  # (B or 1, 1, Q, K)
        return self._built[key]

    def block_mask(self, sliding_window: int | None):
        """FlexAttention BlockMask for the same rule as `dense`.

        Without padding the mask depends only on the slot ranges, so it is taken from a small cache shared by
        all forwards: a training loop at a fixed sequence length builds it once instead of every step.
        """
        key = ("block", sliding_window)
        if key not in self._built:
            cacheable = self.key_valid is None and self.document_ids is None and self.slot_starts is not None
            if cacheable and not torch.compiler.is_compiling():
                self._built[key] = _unpadded_block_mask(
                    self.query_slots.device, self.slot_starts[0], len(self.query_slots), self.slot_starts[1],
                    len(self.key_slots), sliding_window,
                )
            else:
                self._built[key] = _create_block_mask(self.query_slots, self.key_slots, self.key_valid,
                                                      sliding_window, self.document_ids)
        return self._built[key]


def _create_block_mask(query_slots, key_slots, key_valid, sliding_window, document_ids=None):
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q_idx, kv_idx):
        q, k = query_slots[q_idx], key_slots[kv_idx]
        allowed = k <= q
        if sliding_window is not None:
            allowed = allowed & (q - k < sliding_window)
        if document_ids is not None:
            allowed = allowed & (document_ids[b, q_idx] == document_ids[b, kv_idx])
        if key_valid is not None:
            allowed = allowed & (key_valid[b, kv_idx] | (k == q))
        return allowed

    per_row = key_valid if key_valid is not None else document_ids
    batch = None if per_row is None else per_row.shape[0]
    return create_block_mask(mask_mod, batch, None, len(query_slots), len(key_slots), device=query_slots.device)


@functools.lru_cache(maxsize=32)
def _unpadded_block_mask(device, query_start, query_length, key_start, key_length, sliding_window):
    query_slots = torch.arange(query_length, device=device) + query_start
    key_slots = torch.arange(key_length, device=device) + key_start
    return _create_block_mask(query_slots, key_slots, None, sliding_window)


def build_attention_masks(layer_types: list[str], attention_mask: torch.Tensor | None, past_key_values,
                          past_seen: int | torch.Tensor, seq_len: int, device: torch.device,
                          document_ids: torch.Tensor | None = None) -> dict[str, AttentionMask]:
    """One AttentionMask per attention type: the slots of this forward's queries and of the keys it reads.

    Cache layers report which absolute slots their returned keys cover (`get_mask_sizes`): all slots for full
    layers, only the recent ones for sliding-window cache layers, the whole buffer for static caches.
    `attention_mask` is the usual 2-D (batch, slots) padding mask, 1 for tokens and 0 for padding.
    `document_ids` (batch, seq_len) restricts attention to positions of the same document (packed sequences);
    they describe whole sequences, so the keys must be exactly this forward's positions (no cached content).
    """
    if attention_mask is not None and attention_mask.dim() != 2:
        raise ValueError(
            "attention_mask must be 2-D (batch, key positions) with 1 for tokens and 0 for padding, "
            f"got shape {tuple(attention_mask.shape)}"
        )
    if attention_mask is not None and not torch.compiler.is_compiling() and bool(attention_mask.all()):
        # nothing padded: lets sdpa keep its causal fast path. Not under compile or export, where a branch on the
        # mask's values would break the graph (or fail the export); the mask is then simply applied.
        attention_mask = None
    query_slots = torch.arange(seq_len, device=device) + past_seen
    past_is_known_empty = not torch.is_tensor(past_seen) and past_seen == 0
    if document_ids is not None and document_ids.shape[-1] != seq_len:
        raise ValueError(f"document_ids must be (batch, {seq_len}), one id per position, "
                         f"got shape {tuple(document_ids.shape)}")
    masks = {}
    for layer_type in dict.fromkeys(layer_types):
        if past_key_values is None:
            kv_length, kv_offset = seq_len, 0
        else:
            kv_length, kv_offset = past_key_values.get_mask_sizes(seq_len, layer_types.index(layer_type))
        key_valid = None
        if attention_mask is not None:
            # slots past the mask (a static cache's empty tail) count as padding; causality hides them anyway
            padded = F.pad(attention_mask.bool(), (0, max(0, kv_offset + kv_length - attention_mask.shape[1])))
            key_valid = padded[:, kv_offset : kv_offset + kv_length]  # (B, K)
        aligned = past_is_known_empty and kv_offset == 0 and kv_length == seq_len
        if document_ids is not None and not aligned:
            raise ValueError("document_ids describe whole sequences: pass them only to forwards without cached "
                             "content (training, evaluation, scoring), not to cached generation steps")
        masks[layer_type] = AttentionMask(
            query_slots,
            torch.arange(kv_length, device=device) + kv_offset,
            key_valid,
            aligned=aligned,
            keys_end_at_queries=not torch.is_tensor(past_seen) and kv_offset + kv_length == past_seen + seq_len,
            slot_starts=None if torch.is_tensor(past_seen) or torch.is_tensor(kv_offset) else (past_seen, kv_offset),
            document_ids=None if document_ids is None else document_ids.to(device),
        )
    return masks


AttentionOutput = tuple[torch.Tensor, torch.Tensor | None]  # (B, Q, Hq, D) and the weights (eager only)


def repeat_kv(hidden_states: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, Hkv, K, D) -> (B, Hkv * n_rep, K, D), each KV head shared by n_rep consecutive query heads."""
    if n_rep == 1:
        return hidden_states
    batch, num_kv_heads, length, head_dim = hidden_states.shape
    hidden_states = hidden_states[:, :, None].expand(batch, num_kv_heads, n_rep, length, head_dim)
    return hidden_states.reshape(batch, num_kv_heads * n_rep, length, head_dim)


def eager_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: AttentionMask, *, scaling: float, dropout: float, softcap: float | None,
                            sliding_window: int | None, **kwargs) -> AttentionOutput:
    """Reference implementation: scores, softcap, mask, fp32 softmax."""
    n_rep = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, n_rep), repeat_kv(value, n_rep)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # (B, H, Q, K)
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    scores = scores.masked_fill(~attention_mask.dense(sliding_window), torch.finfo(scores.dtype).min)
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if dropout > 0.0:
        weights = F.dropout(weights, p=dropout, training=True)
    output = torch.matmul(weights, value)  # (B, H, Q, D)
    return output.transpose(1, 2), weights


def sdpa_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask: AttentionMask, *, scaling: float, dropout: float, softcap: float | None,
                           sliding_window: int | None, **kwargs) -> AttentionOutput:
    if softcap is not None:
        raise ValueError(
            "attn_implementation='sdpa' cannot apply attn_logit_softcapping; use 'eager' or 'flex_attention', "
            "or set attn_logit_softcapping=None"
        )
    is_causal = attention_mask.is_plain_causal(sliding_window)
    if not is_causal:
        # With an explicit mask the memory-efficient kernel runs, and it has no grouped-query support:
        # share the KV heads by expanding them rather than fall back to the math kernel.
        n_rep = query.shape[1] // key.shape[1]
        key, value = repeat_kv(key, n_rep), repeat_kv(value, n_rep)
    output = F.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=None if is_causal else attention_mask.dense(sliding_window),
        dropout_p=dropout,
        is_causal=is_causal,
        scale=scaling,
        # a Python bool even under tracing, where shapes are tensors (head counts are fixed, so it is a constant)
        enable_gqa=bool(query.shape[1] != key.shape[1]),
    )  # (B, H, Q, D)
    return output.transpose(1, 2), None


@functools.lru_cache(maxsize=None)
def _softcap_score_mod(softcap, device_type, dtype):
    # One function object per cap value, device type and input dtype, so a compiled flex_attention is not re-traced
    # for every call. On CUDA with 16-bit inputs the tanh is the hardware approximation (softcap_moderngpt2).
    tanh = softcap_tanh_function(device_type, dtype)

    def score_mod(score, b, h, q_idx, kv_idx):
        return softcap * tanh(score / softcap)

    return score_mod


@functools.lru_cache(maxsize=None)
def _flex_attention_function(device_type):
    from torch.nn.attention.flex_attention import flex_attention

    # Uncompiled flex_attention materialises the scores; compiled it is a fused kernel (CUDA only). Default dynamic
    # shapes: after the first recompilation sequence lengths become symbolic, so decoding does not recompile per step.
    return torch.compile(flex_attention) if device_type == "cuda" else flex_attention


def flex_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask: AttentionMask, *, scaling: float, dropout: float, softcap: float | None,
                           sliding_window: int | None, **kwargs) -> AttentionOutput:
    if dropout > 0.0:
        raise ValueError("attn_implementation='flex_attention' has no attention dropout; set attention_dropout=0.0")
    if query.device.type == "cpu" and torch.is_grad_enabled() and query.requires_grad:
        raise ValueError(
            "attn_implementation='flex_attention' has no backward pass on the CPU; train on the CPU with 'eager'"
        )
    output = _flex_attention_function(query.device.type)(
        query,
        key,
        value,
        score_mod=None if softcap is None else _softcap_score_mod(float(softcap), query.device.type, query.dtype),
        block_mask=attention_mask.block_mask(sliding_window),
        scale=scaling,
        enable_gqa=query.shape[1] != key.shape[1],
    )  # (B, H, Q, D)
    return output.transpose(1, 2), None


def flash_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: AttentionMask, *, scaling: float, dropout: float, softcap: float | None,
                            sliding_window: int | None, **kwargs) -> AttentionOutput:
    from flash_attn import flash_attn_func

    if (attention_mask.key_valid is not None or attention_mask.document_ids is not None
            or not attention_mask.keys_end_at_queries):
        raise ValueError(
            "attn_implementation='flash_attention_2' needs unpadded inputs, one document per row and a dynamic "
            "cache; use 'sdpa' or 'flex_attention' for padded batches, document_ids or a static cache"
        )
    output = flash_attn_func(
        query.transpose(1, 2),  # (B, Q, H, D)
        key.transpose(1, 2),
        value.transpose(1, 2),
        dropout_p=dropout,
        softmax_scale=scaling,
        causal=True,  # aligned bottom-right: the last query sees the last key
        window_size=(-1, -1) if sliding_window is None else (sliding_window - 1, 0),
        softcap=0.0 if softcap is None else softcap,
    )
    return output, None


MODERNGPT2_ATTENTION = ("eager", "sdpa", "flex_attention", "flash_attention_2")

# A local instance: ours override transformers' functions of the same names for this model only, and every other
# name falls through to transformers' global registry.
ATTENTION_FUNCTIONS = AttentionInterface()
ATTENTION_FUNCTIONS["eager"] = eager_attention_forward
ATTENTION_FUNCTIONS["sdpa"] = sdpa_attention_forward
ATTENTION_FUNCTIONS["flex_attention"] = flex_attention_forward
ATTENTION_FUNCTIONS["flash_attention_2"] = flash_attention_forward


def is_external_attention(name) -> bool:
    """True for a function registered with transformers' AttentionInterface from outside transformers.

    It receives a boolean mask `(B or 1, 1, Q, K)`, True where a query may attend. transformers' own functions
    expect their own mask formats, so ours stand in for those names and any other of theirs is refused.
    """
    if not isinstance(name, str) or name in MODERNGPT2_ATTENTION or name not in ATTENTION_FUNCTIONS:
        return False
    return not getattr(ATTENTION_FUNCTIONS[name], "__module__", "").startswith("transformers.")


# Set on the config of a loaded model when no backend was requested; never saved (see the configuration).
AUTOMATIC_FLAG = "attn_implementation_is_automatic"


def resolve_attn_implementation(config, requested: str | None) -> str:
    """Validate an explicit backend request, or mark the config automatic when there is none.

    Returns what transformers stores as `config._attn_implementation`: the request, or the automatic choice for a
    CPU forward. Re-requesting that stored value while automatic (transformers does on reload) keeps it automatic.
    """
    still_automatic = getattr(config, AUTOMATIC_FLAG, False) and requested == config._attn_implementation
    if requested is None or still_automatic:
        setattr(config, AUTOMATIC_FLAG, True)
        return select_attention_backend(config, "cpu", query_length=None, has_cache=False, training=False)
    if not is_external_attention(requested):
        check_attention_backend(requested, config)
    setattr(config, AUTOMATIC_FLAG, False)
    return requested


def uses_attention_quirks(config) -> bool:
    """Softcapping or a sliding window: what the plain fused sdpa kernels cannot do."""
    return config.attn_logit_softcapping is not None or "sliding_attention" in config.layer_types


def select_attention_backend(config, device_type: str, query_length: int | None, has_cache: bool, training: bool,
                             document_mask: bool = False, attention_weights: bool = False) -> str:
    """The backend one forward runs: the explicit `attn_implementation` if there is one, else the automatic choice.

    The choice is made again for every forward (flex for training with softcap, eager at decode, ...) unless
    `attn_implementation` was given explicitly (`from_pretrained`, the config or `set_attn_implementation`), which
    then holds for every forward. The automatic choice is the fastest backend that honours every setting:

    | softcap, window or documents | device   | the forward                                | backend          |
    |------------------------------|----------|--------------------------------------------|------------------|
    | any                          | any      | with `output_attentions` (weights wanted)  | `eager`          |
    | none                         | any      | any                                        | `sdpa`           |
    | any                          | not CUDA | any                                        | `eager`          |
    | any                          | CUDA     | decode step: 1 query and a cache           | `eager`          |
    | any                          | CUDA     | training with attention_dropout > 0        | `eager`          |
    | any                          | CUDA     | anything else (training, prefill, scoring) | `flex_attention` |

    Decode steps avoid flex: its compiled kernel and BlockMask are specialised to the key length, which grows by
    one every step, so each step would recompile and rebuild the mask; eager's scores are only (B, H, 1, K).
    `query_length=None` stands for a full-sequence forward. `document_mask`: the forward has document ids (packed
    sequences), which sdpa could only take as a dense mask, losing its flash kernel; flex skips whole blocks.
    """
    requested = config._attn_implementation
    if requested is not None and not getattr(config, AUTOMATIC_FLAG, False):
        return requested
    if attention_weights:
        return "eager"  # the only backend that computes the weights
    if not uses_attention_quirks(config) and not document_mask:
        return "sdpa"
    if device_type != "cuda":
        return "eager"  # flex runs uncompiled there, slower than eager, and has no backward on the CPU
    if has_cache and query_length == 1:
        return "eager"
    if training and config.attention_dropout > 0.0:
        return "eager"  # flex has no attention dropout
    return "flex_attention"


def check_attention_backend(name: str, config) -> None:
    """Raise a ValueError naming the setting when backend `name` cannot run `config` faithfully."""
    if name not in MODERNGPT2_ATTENTION:
        raise ValueError(
            f"attn_implementation={name!r} is not supported; choose one of {', '.join(MODERNGPT2_ATTENTION)}"
        )
    if name == "sdpa" and config.attn_logit_softcapping is not None:
        raise ValueError(
            f"attn_implementation='sdpa' cannot apply attn_logit_softcapping={config.attn_logit_softcapping}; "
            "use 'eager' or 'flex_attention' (or leave attn_implementation unset to choose automatically)"
        )
    if name == "flex_attention" and importlib.util.find_spec("torch.nn.attention.flex_attention") is None:
        raise ValueError("attn_implementation='flex_attention' needs a torch with torch.nn.attention.flex_attention")
    if name == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise ValueError(
            "attn_implementation='flash_attention_2' needs the flash_attn package; install it or use 'sdpa'"
        )
