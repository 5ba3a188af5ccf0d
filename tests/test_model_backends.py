"""Attention backends: agreement with eager, automatic choice, refusals that name the setting, GPU kernels."""

import itertools

import pytest
import torch

from moderngpt2 import ModernGPT2Config, ModernGPT2ForCausalLM
from moderngpt2.attention_moderngpt2 import build_attention_masks, select_attention_backend

VOCAB = 97
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


def tiny_config(**overrides):
    return ModernGPT2Config(**{"model_size_name": "tiny", "vocab_size": VOCAB, **overrides})


def with_backend(model, backend):
    """The same weights, run through `backend`."""
    other = ModernGPT2ForCausalLM(ModernGPT2Config(**{**model.config.to_dict(), "attn_implementation": backend}))
    other.load_state_dict(model.state_dict())
    return other.eval()


def batch(padded):
    ids = torch.randint(0, VOCAB, (3, 19))
    mask = torch.ones_like(ids)
    if padded:
        mask[0, :5] = 0  # left padding
        mask[1, 15:] = 0  # right padding
    return ids, mask


CASES = [
    dict(softcap=softcap, window=window, kv_heads=kv_heads, padded=padded)
    for softcap, window, kv_heads, padded in itertools.product((None, 3.0), (None, 4), (1, 4), (False, True))
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_sdpa_and_flex_agree_with_eager(case):
    # two layers: with a window, one sliding and one full layer
    config = tiny_config(num_key_value_heads=case["kv_heads"], attn_logit_softcapping=case["softcap"],
                         sliding_window=case["window"], attn_implementation="eager")
    model = ModernGPT2ForCausalLM(config).eval()
    ids, mask = batch(case["padded"])
    with torch.no_grad():
        reference = model(ids, attention_mask=mask).logits
        real = mask.bool()
        for backend in ("sdpa", "flex_attention"):
            if backend == "sdpa" and case["softcap"] is not None:
                continue  # refused, see test_sdpa_refuses_attention_softcapping
            model.set_attn_implementation(backend)
            assert model.attention_backend(ids.device) == backend
            logits = model(ids, attention_mask=mask).logits
            assert torch.isfinite(logits).all()
            torch.testing.assert_close(logits[real], reference[real], atol=1e-5, rtol=1e-5, msg=backend)


def test_padding_changes_nothing_for_the_real_tokens():
    model = ModernGPT2ForCausalLM(tiny_config(sliding_window=4, attn_implementation="sdpa")).eval()
    ids = torch.randint(0, VOCAB, (1, 9))
    padded = torch.cat((torch.zeros(1, 3, dtype=torch.long), ids), dim=1)
    mask = torch.cat((torch.zeros(1, 3), torch.ones(1, 9)), dim=1).long()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        alone = model(ids).logits
        left = model(padded, attention_mask=mask, position_ids=positions).logits[:, 3:]
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=1e-5)


def test_sdpa_refuses_attention_softcapping_and_names_it():
    with pytest.raises(ValueError, match=r"attn_implementation='sdpa' cannot apply attn_logit_softcapping=50.0"):
        ModernGPT2ForCausalLM(tiny_config(attn_logit_softcapping=50.0, attn_implementation="sdpa"))
    model = ModernGPT2ForCausalLM(tiny_config(attn_logit_softcapping=50.0))
    with pytest.raises(ValueError, match="attn_logit_softcapping"):
        model.set_attn_implementation("sdpa")


def test_unknown_and_unavailable_backends_are_refused():
    with pytest.raises(ValueError, match=r"attn_implementation='paged' is not supported; choose one of eager, sdpa"):
        ModernGPT2ForCausalLM(tiny_config(attn_implementation="paged"))
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="needs the flash_attn package"):
            ModernGPT2ForCausalLM(tiny_config(attn_implementation="flash_attention_2"))


PLAIN, CAPPED, WINDOWED = dict(), dict(attn_logit_softcapping=50.0), dict(sliding_window=8)
DROPOUT = dict(attn_logit_softcapping=50.0, attention_dropout=0.1)
FULL, PREFILL, DECODE, SINGLE = (None, False), (7, True), (1, True), (1, False)  # (query_length, has_cache)
SELECTION_TABLE = [
    # config, device, (query_length, has_cache), training -> backend
    *[(PLAIN, device, forward, training, "sdpa")
      for device in ("cpu", "cuda") for forward in (FULL, PREFILL, DECODE) for training in (False, True)],
    *[(quirk, "cpu", forward, training, "eager")
      for quirk in (CAPPED, WINDOWED, DROPOUT) for forward in (FULL, PREFILL, DECODE) for training in (False, True)],
    *[(quirk, "cuda", forward, False, "flex_attention")
      for quirk in (CAPPED, WINDOWED, DROPOUT) for forward in (FULL, PREFILL, SINGLE)],
    (CAPPED, "cuda", FULL, True, "flex_attention"),
    (WINDOWED, "cuda", FULL, True, "flex_attention"),
    (CAPPED, "cuda", DECODE, False, "eager"),  # one query against a growing cache: no recompilation
    (WINDOWED, "cuda", DECODE, False, "eager"),
    (DROPOUT, "cuda", FULL, True, "eager"),  # flex has no attention dropout
    (DROPOUT, "cuda", DECODE, False, "eager"),
    # an explicit request wins everywhere
    (dict(CAPPED, attn_implementation="flex_attention"), "cuda", DECODE, False, "flex_attention"),
    (dict(CAPPED, attn_implementation="flex_attention"), "cpu", FULL, False, "flex_attention"),
    (dict(CAPPED, attn_implementation="eager"), "cuda", FULL, True, "eager"),
    (dict(WINDOWED, attn_implementation="sdpa"), "cuda", FULL, True, "sdpa"),
    (dict(attn_implementation="eager"), "cuda", PREFILL, False, "eager"),
]


@pytest.mark.parametrize("overrides, device, forward, training, expected", SELECTION_TABLE)
def test_backend_selection_table(overrides, device, forward, training, expected):
    query_length, has_cache = forward
    config = tiny_config(**overrides)
    assert select_attention_backend(config, device, query_length, has_cache, training) == expected


def test_models_select_per_forward_and_report_the_cpu_choice_in_the_config():
    capped = ModernGPT2ForCausalLM(tiny_config(attn_logit_softcapping=50.0))
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert capped.config._attn_implementation == "eager" and capped.attention_backend(cpu) == "eager"
    assert capped.attention_backend(cuda) == "flex_attention"
    assert capped.attention_backend(cuda, query_length=1, has_cache=True) == "eager"
    assert capped.attention_backend("cuda", query_length=5, has_cache=True) == "flex_attention"
    dropout = ModernGPT2ForCausalLM(tiny_config(sliding_window=8, attention_dropout=0.1))
    assert dropout.train().attention_backend(cuda) == "eager"
    assert dropout.eval().attention_backend(cuda) == "flex_attention"  # no dropout at inference
    assert ModernGPT2ForCausalLM(tiny_config()).attention_backend(cpu) == "sdpa"


def test_attention_weights_requested_run_eager_when_the_choice_is_automatic():
    """sdpa computes no weights: with `output_attentions` the automatic choice is eager, with the same logits."""
    torch.manual_seed(0)
    model = ModernGPT2ForCausalLM(tiny_config()).eval()  # no softcap, no window: sdpa otherwise
    cpu = torch.device("cpu")
    assert model.attention_backend(cpu) == "sdpa" and model.attention_backend(cpu, attention_weights=True) == "eager"
    ids = torch.randint(0, VOCAB, (2, 7))
    with torch.no_grad():
        plain, weighed = model(ids), model(ids, output_attentions=True)
    assert len(weighed.attentions) == model.config.n_layer
    for weights in weighed.attentions:
        assert weights.shape == (2, 4, 7, 7) and torch.all(weights.triu(1) == 0)
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 7))
    torch.testing.assert_close(weighed.logits, plain.logits, atol=1e-5, rtol=1e-5)
    model.set_attn_implementation("sdpa")  # an explicit choice holds: no weights to capture
    assert model(ids, output_attentions=True).attentions == ()


def test_explicit_choice_is_honoured_on_every_device_and_can_be_changed():
    model = ModernGPT2ForCausalLM(tiny_config(attn_logit_softcapping=50.0, attn_implementation="eager"))
    assert model.attention_backend(torch.device("cuda")) == "eager"
    model.set_attn_implementation("flex_attention")
    assert model.attention_backend(torch.device("cpu")) == "flex_attention"
    assert model.model.attention_backend(torch.device("cpu")) == "flex_attention"
    automatic = ModernGPT2ForCausalLM(tiny_config(attn_logit_softcapping=50.0))
    automatic.set_attn_implementation("eager")  # equal to the automatic CPU choice, still an explicit request
    assert automatic.attention_backend(torch.device("cuda")) == "eager"


def test_from_pretrained_takes_attn_implementation(tmp_path):
    ModernGPT2ForCausalLM(tiny_config(sliding_window=4)).save_pretrained(tmp_path)
    model = ModernGPT2ForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa")
    assert model.attention_backend(torch.device("cpu")) == "sdpa"
    assert ModernGPT2ForCausalLM.from_pretrained(tmp_path).attention_backend(torch.device("cuda")) == "flex_attention"


def test_flex_attention_refuses_training_on_the_cpu():
    model = ModernGPT2ForCausalLM(tiny_config(attn_logit_softcapping=50.0, attn_implementation="flex_attention"))
    ids = torch.randint(0, VOCAB, (1, 8))
    with pytest.raises(ValueError, match="no backward pass on the CPU; train on the CPU with 'eager'"):
        model(ids, labels=ids)


def test_unpadded_block_masks_are_built_once_across_forwards():
    def masks(attention_mask=None, past_seen=0):
        return build_attention_masks(["full_attention"], attention_mask, None, past_seen, 19, torch.device("cpu"))

    first, second = masks()["full_attention"], masks()["full_attention"]
    assert first.block_mask(None) is second.block_mask(None)  # a training loop at a fixed length builds it once
    assert first.block_mask(4) is second.block_mask(4) and first.block_mask(4) is not first.block_mask(None)
    assert masks(past_seen=3)["full_attention"].block_mask(None) is not first.block_mask(None)
    mask = torch.ones(2, 19, dtype=torch.long)
    mask[0, :4] = 0  # padding depends on the batch: never shared
    assert masks(mask)["full_attention"].block_mask(None) is not masks(mask)["full_attention"].block_mask(None)


def test_eager_and_sdpa_gradients_agree():
    eager = ModernGPT2ForCausalLM(tiny_config(sliding_window=3, num_key_value_heads=1, attn_implementation="eager"))
    sdpa = with_backend(eager, "sdpa")
    ids, mask = batch(padded=True)
    grads = []
    for model in (eager, sdpa):
        model(ids, attention_mask=mask, labels=ids).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_flex_attention_on_cuda_matches_eager_and_trains(dtype):
    config = tiny_config(n_layer=3, attn_logit_softcapping=20.0, sliding_window=16, final_logit_softcapping=15.0,
                         attn_implementation="eager")
    cpu_model = ModernGPT2ForCausalLM(config)
    flex = with_backend(cpu_model, "flex_attention").to("cuda", dtype)
    eager = cpu_model.eval().to("cuda", dtype)
    ids = torch.randint(0, VOCAB, (2, 200), device="cuda")
    mask = torch.ones_like(ids)
    mask[0, :30] = 0
    with torch.no_grad():
        reference = eager(ids, attention_mask=mask).logits.float()
        logits = flex(ids, attention_mask=mask).logits.float()
    real = mask.bool()
    tolerance = 1e-4 if dtype == torch.float32 else 0.05 * reference[real].abs().max().item()
    torch.testing.assert_close(logits[real], reference[real], atol=tolerance, rtol=0)
    flex.train()
    flex(ids, labels=ids).loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in flex.parameters())
