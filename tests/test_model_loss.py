"""The fused linear cross-entropy against the naive loss (values and gradients), and transformers' `shift_labels`."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from moderngpt2 import ModernGPT2Config, ModernGPT2ForCausalLM
from moderngpt2.loss_moderngpt2 import fused_linear_cross_entropy, shifted_targets

VOCAB, HIDDEN = 97, 24


def naive(hidden, weight, labels, cap, num_items_in_batch=None):
    """Written out independently: full float32 logits, softcap, shift, mean (or sum / num_items) cross-entropy."""
    logits = F.linear(hidden, weight).float()
    if cap is not None:
        logits = cap * torch.tanh(logits / cap)
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                           ignore_index=-100, reduction="sum")
    count = (labels[:, 1:] != -100).sum() if num_items_in_batch is None else num_items_in_batch
    return loss / count


def leaves(dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(3, 11, HIDDEN, generator=generator).mul(2.0).to(dtype).requires_grad_()
    weight = torch.randn(VOCAB, HIDDEN, generator=generator).mul(0.5).to(dtype).requires_grad_()
    labels = torch.randint(0, VOCAB, (3, 11), generator=generator)
    labels[0, 2:7] = -100
    labels[2, :] = -100  # a row with nothing to predict
    return hidden, weight, labels


def value_and_grads(loss_fn, hidden, weight, upstream=1.0):
    loss = loss_fn(hidden, weight)
    hidden.grad = weight.grad = None
    (loss * upstream).backward()
    return loss.detach(), hidden.grad.clone(), weight.grad.clone()


@pytest.mark.parametrize("cap", [None, 5.0])
@pytest.mark.parametrize("num_items_in_batch", [None, 7])
@pytest.mark.parametrize("chunk_size", [4, 33, 2048])  # several chunks with a partial last one; exactly one; one
def test_fused_loss_and_gradients_equal_the_naive_ones_in_float32(cap, num_items_in_batch, chunk_size):
    hidden, weight, labels = leaves()
    expected = value_and_grads(lambda h, w: naive(h, w, labels, cap, num_items_in_batch), hidden, weight, 3.0)
    got = value_and_grads(
        lambda h, w: fused_linear_cross_entropy(h, w, labels, cap, num_items_in_batch, chunk_size=chunk_size),
        hidden, weight, 3.0,  # an upstream gradient other than 1 checks that backward scales by it
    )
    assert expected[0].item() > 0.5
    for name, want, have in zip(("loss", "grad hidden", "grad weight"), expected, got):
        torch.testing.assert_close(have, want, atol=1e-5, rtol=1e-5, msg=name)
    assert got[1][2].abs().max() == 0  # positions with ignored targets get no gradient


def test_softcap_changes_the_loss_so_the_comparison_can_fail():
    hidden, weight, labels = leaves()
    with torch.no_grad():
        assert abs(fused_linear_cross_entropy(hidden, weight, labels, 5.0) - naive(hidden, weight, labels, None)) > 0.1


def test_three_head_matmuls_in_the_forward_and_none_in_backward():
    hidden, weight, labels = leaves()
    with FlopCounterMode(display=False) as forward_flops:
        loss = fused_linear_cross_entropy(hidden, weight, labels, 5.0, chunk_size=8)
    with FlopCounterMode(display=False) as backward_flops:
        loss.backward()
    positions = hidden.shape[0] * hidden.shape[1]
    # logits, then the gradients for the hidden states and for the weight: 2 N V H FLOPs each
    assert forward_flops.get_total_flops() == 3 * 2 * positions * VOCAB * HIDDEN
    assert backward_flops.get_total_flops() == 0  # backward only scales what the forward computed


def test_only_the_gradients_asked_for_are_computed():
    hidden, weight, labels = leaves()
    weight.requires_grad_(False)
    loss = fused_linear_cross_entropy(hidden, weight, labels, 5.0, chunk_size=8)
    assert [t is None for t in loss.grad_fn.next_functions[0][0].saved_tensors] == [False, True]
    with torch.no_grad():
        assert fused_linear_cross_entropy(hidden, weight, labels, 5.0).grad_fn is None


def test_bf16_inputs_under_autocast_stay_close_to_the_float32_loss():
    hidden, weight, labels = leaves()
    expected = value_and_grads(lambda h, w: naive(h, w, labels, 5.0), hidden, weight)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = value_and_grads(lambda h, w: fused_linear_cross_entropy(h, w, labels, 5.0, chunk_size=8),
                              hidden, weight)
    assert got[1].dtype == hidden.dtype and got[2].dtype == weight.dtype
    torch.testing.assert_close(got[0], expected[0], atol=2e-2, rtol=2e-2)
    for want, have in zip(expected[1:], got[1:]):
        assert (have - want).norm() / want.norm() < 2e-2


def tiny_model(tied):
    config = ModernGPT2Config(model_size_name="tiny", vocab_size=VOCAB, final_logit_softcapping=3.0,
                              attn_logit_softcapping=20.0, tie_word_embeddings=tied, attn_implementation="eager")
    model = ModernGPT2ForCausalLM(config)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    return model


def model_loss_and_grads(model, **inputs):
    model.zero_grad()
    out = model(**inputs)
    out.loss.backward()
    return out, {name: param.grad.clone() for name, param in model.named_parameters()}


@pytest.mark.parametrize("tied", [True, False])
def test_model_training_loss_is_the_fused_one_and_equals_the_naive_path(tied):
    model = tiny_model(tied)
    model.loss_chunk_size = 5
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[1, :4] = -100
    fused, fused_grads = model_loss_and_grads(model, input_ids=ids, labels=labels, num_items_in_batch=11)
    assert fused.logits is None and fused.loss.grad_fn.name() == "DivBackward0"
    assert type(fused.loss.grad_fn.next_functions[0][0]).__name__ == "FusedLinearCrossEntropyBackward"
    naive_out, naive_grads = model_loss_and_grads(model, input_ids=ids, labels=labels, num_items_in_batch=11,
                                                  return_logits=True)
    torch.testing.assert_close(fused.loss, naive_out.loss, atol=1e-5, rtol=1e-5)
    for name, grad in naive_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, atol=1e-5, rtol=1e-5, msg=name)


def test_shift_labels_are_used_as_given_and_never_shifted_again():
    model = tiny_model(True).eval()
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(2))
    pre_shifted = shifted_targets(ids)
    with torch.no_grad():
        reference = model(input_ids=ids, labels=ids).loss
        for return_logits in (False, True):
            only_shifted = model(input_ids=ids, shift_labels=pre_shifted, return_logits=return_logits).loss
            both = model(input_ids=ids, labels=ids, shift_labels=pre_shifted, return_logits=return_logits).loss
            torch.testing.assert_close(only_shifted, reference, atol=1e-6, rtol=0)
            torch.testing.assert_close(both, reference, atol=1e-6, rtol=0)
        # negative control: shifting the pre-shifted targets once more predicts two tokens ahead
        shifted_twice = model(input_ids=ids, labels=pre_shifted).loss
    assert abs(shifted_twice - reference) > 1e-3


def test_the_trainer_sees_labels_as_the_only_label_column():
    # The Trainer takes every named forward parameter containing "label" as a label column and computes no eval
    # loss when a batch lacks one, so shift_labels must stay a keyword read from kwargs.
    from transformers.utils import find_labels

    assert find_labels(ModernGPT2ForCausalLM) == ["labels"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_under_bf16_autocast_the_fused_loss_matches_and_holds_less_memory():
    generator = torch.Generator(device="cuda").manual_seed(0)
    hidden = torch.randn(4, 1024, 256, device="cuda", generator=generator).requires_grad_()
    weight = torch.randn(32000, 256, device="cuda", generator=generator).mul(0.05).requires_grad_()
    labels = torch.randint(0, 32000, (4, 1024), device="cuda", generator=generator)

    def run(loss_fn):
        hidden.grad = weight.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_fn()
        loss.backward()
        torch.cuda.synchronize()
        return loss.detach(), hidden.grad.clone(), weight.grad.clone(), torch.cuda.max_memory_allocated() - base

    def naive_bf16():
        logits = F.linear(hidden, weight).float()
        return F.cross_entropy((30.0 * torch.tanh(logits / 30.0))[:, :-1].reshape(-1, 32000),
                               labels[:, 1:].reshape(-1))

    naive_result = run(naive_bf16)
    fused_result = run(lambda: fused_linear_cross_entropy(hidden, weight, labels, 30.0))
    torch.testing.assert_close(fused_result[0], naive_result[0], atol=1e-2, rtol=1e-3)
    for want, have in zip(naive_result[1:3], fused_result[1:3]):
        assert ((have - want).norm() / want.norm()).item() < 2e-2
    assert fused_result[3] < naive_result[3]  # the full (4096, 32000) float32 logits never exist
