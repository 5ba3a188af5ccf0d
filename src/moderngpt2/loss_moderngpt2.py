"""The causal language-modelling loss of ModernGPT2: shifted cross-entropy over softcapped logits.

Two paths compute the same number:

- `causal_lm_loss_from_logits`: the naive loss over full logits `(B, S, V)`, for callers that want the logits too.
- `fused_linear_cross_entropy`: LM head, final softcap and cross-entropy fused over chunks of positions. Each chunk's
  float32 logits live only inside the forward, which also computes the gradients with respect to the hidden states
  and the head weight; backward only scales them by the incoming gradient. So the full float32 logits never exist
  and the LM-head matmul is not recomputed in backward (three head matmuls per chunk instead of four).

Targets follow transformers' convention: `labels` are shifted here (position t predicts labels[t + 1]);
`shift_labels`, when given, are already shifted (context parallelism shards them that way) and are used as they are.

This module imports only torch, so it travels next to a checkpoint with the modeling file.
"""

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
# Positions per chunk: bounds the float32 logits held at once to chunk_size x vocab_size.
DEFAULT_CHUNK_SIZE = 2048


def upcast(tensor: torch.Tensor) -> torch.Tensor:
    """At least float32 (float64 stays float64): where the loss is computed."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def softcap(logits: torch.Tensor, cap: float) -> torch.Tensor:
    """`cap * tanh(logits / cap)`: bounds logits smoothly to (-cap, cap)."""
    return cap * torch.tanh(logits / cap)


def shifted_targets(labels: torch.Tensor) -> torch.Tensor:
    """labels (B, S) -> targets (B, S): position t predicts labels[t + 1]; the last position predicts nothing."""
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


def causal_targets(labels: torch.Tensor | None = None, shift_labels: torch.Tensor | None = None) -> torch.Tensor:
    """The flat targets `(B*S,)`: `shift_labels` as they are when given, else `labels` shifted once."""
    if shift_labels is not None:
        return shift_labels.reshape(-1)
    if labels is None:
        raise ValueError("the loss needs labels or shift_labels")
    return shifted_targets(labels).reshape(-1)


def normalise_loss(loss_sum: torch.Tensor, targets: torch.Tensor,
                   num_items_in_batch: int | torch.Tensor | None = None) -> torch.Tensor:
    """sum / num_items_in_batch when given (exact gradient accumulation), else the mean over counted targets."""
    if num_items_in_batch is None:
        return loss_sum / (targets != IGNORE_INDEX).sum().clamp(min=1)
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(loss_sum.device)
    return loss_sum / num_items_in_batch


def causal_lm_loss_from_logits(logits: torch.Tensor, labels: torch.Tensor | None = None,
                               num_items_in_batch: int | torch.Tensor | None = None,
                               shift_labels: torch.Tensor | None = None) -> torch.Tensor:
    """The naive loss: float32 cross-entropy over all logits (B, S, V) at once."""
    targets = causal_targets(labels, shift_labels).to(logits.device)
    loss_sum = F.cross_entropy(upcast(logits).reshape(-1, logits.shape[-1]), targets, ignore_index=IGNORE_INDEX,
                               reduction="sum")
    return normalise_loss(loss_sum, targets, num_items_in_batch)


def _chunk_loss_and_logit_grad(hidden_chunk, weight, target_chunk, cap, with_grad):
    """Summed cross-entropy of one chunk and, if asked, its gradient with respect to the head's raw output z.

    With y = softcap(z) and p = softmax(y): dL/dy = p - onehot(target), and dy/dz = 1 - (y / cap)^2, the
    derivative of tanh written through its output. Rows whose target is ignored get a zero gradient.
    """
    raw = F.linear(hidden_chunk, weight)  # (C, V), in the compute dtype (bf16 under autocast)
    logits = upcast(raw)
    if cap is not None:
        logits = softcap(logits, cap)
    loss_sum = F.cross_entropy(logits, target_chunk, ignore_index=IGNORE_INDEX, reduction="sum")
    if not with_grad:
        return loss_sum, None
    counted = target_chunk != IGNORE_INDEX
    grad = torch.softmax(logits, dim=-1)
    grad.scatter_add_(1, target_chunk.clamp(min=0)[:, None], -counted[:, None].to(grad.dtype))
    grad.mul_(counted[:, None])
    if cap is not None:
        grad.mul_(1.0 - (logits / cap).square())
    return loss_sum, grad.to(raw.dtype)


class FusedLinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of softcap(hidden @ weight.T) against targets, gradients computed in the forward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, cap, chunk_size):
        want_hidden, want_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        with_grad = want_hidden or want_weight
        loss_sum = upcast(hidden.new_zeros(()))
        grad_hidden = torch.zeros_like(hidden) if want_hidden else None
        # float32 accumulation across chunks, whatever the matmul dtype
        grad_weight = torch.zeros_like(weight, dtype=torch.promote_types(weight.dtype, torch.float32)) \
            if want_weight else None
        for start in range(0, hidden.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            chunk_loss, grad_raw = _chunk_loss_and_logit_grad(hidden[rows], weight, targets[rows], cap, with_grad)
            loss_sum = loss_sum + chunk_loss
            if want_hidden:
                grad_hidden[rows] = grad_raw @ weight.to(grad_raw.dtype)  # (C, H)
            if want_weight:
                grad_weight += (grad_raw.t() @ hidden[rows].to(grad_raw.dtype)).to(grad_weight.dtype)  # (V, H)
        if want_weight:
            grad_weight = grad_weight.to(weight.dtype)
        ctx.save_for_backward(grad_hidden, grad_weight)
        return loss_sum

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_hidden is not None:
            grad_hidden = grad_hidden * grad_loss.to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = grad_weight * grad_loss.to(grad_weight.dtype)
        return grad_hidden, grad_weight, None, None, None


def fused_linear_cross_entropy(hidden_states: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor | None = None,
                               final_softcap: float | None = None,
                               num_items_in_batch: int | torch.Tensor | None = None,
                               shift_labels: torch.Tensor | None = None,
                               chunk_size: int = DEFAULT_CHUNK_SIZE) -> torch.Tensor:
    """The causal LM loss of `softcap(hidden_states @ weight.T)`, never holding the full float32 logits.

    hidden_states (B, S, H), weight (V, H). Equal to `causal_lm_loss_from_logits` of the same logits, loss and
    gradients, to float rounding.
    """
    targets = causal_targets(labels, shift_labels).to(hidden_states.device)
    flat_hidden = hidden_states.reshape(-1, hidden_states.shape[-1])  # (B*S, H)
    loss_sum = FusedLinearCrossEntropy.apply(flat_hidden, weight, targets, final_softcap, chunk_size)
    return normalise_loss(loss_sum, targets, num_items_in_batch)
