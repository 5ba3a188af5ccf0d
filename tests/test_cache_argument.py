"""The cache argument under both of its names: `cache` (transformers >= 5.24) and `past_key_values` (before).

The model reads either name, returns the cache under the one the running transformers uses, and a cached
generate() neither misbehaves nor triggers a deprecation warning on either side of the rename.
"""

import dataclasses
import inspect
import logging
import warnings

import pytest
import torch
from transformers import DynamicCache, GenerationMixin
from transformers.modeling_outputs import CausalLMOutputWithPast

from moderngpt2 import ModernGPT2Config, ModernGPT2ForCausalLM, ModernGPT2ForSequenceClassification
from moderngpt2.modeling_moderngpt2 import CACHE_NAME

VOCAB = 61
PER_LAYER = dict(use_per_layer_embedding=True, per_layer_vocab_size=30, per_layer_hidden_size=8)


def tiny_config(**overrides):
    return ModernGPT2Config(**{"model_size_name": "tiny", "vocab_size": VOCAB, "initializer_range": 0.1,
                               "eos_token_id": None, "pad_token_id": 0, "sliding_window": 4, **overrides})


class RecordTransformersLogs(logging.Handler):
    """Collects what transformers logs; its deprecation notices for the cache name go through `warning_once`."""

    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def transformers_logs():
    # `warning_once` remembers what it said for the life of the process; forget it, so nothing is hidden here.
    logging.Logger.warning_once.cache_clear()
    handler = RecordTransformersLogs()
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


def test_cache_name_is_the_one_generate_passes_and_outputs_carry():
    generate_arguments = inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
    output_fields = {field.name for field in dataclasses.fields(CausalLMOutputWithPast)}
    assert CACHE_NAME in generate_arguments
    assert CACHE_NAME in output_fields
    assert CACHE_NAME in ("cache", "past_key_values")


@pytest.mark.parametrize("overrides", [{}, PER_LAYER], ids=["plain", "per-layer"])
@pytest.mark.parametrize("cache_implementation", ["dynamic", "static"])
def test_cached_generate_warns_nothing_and_equals_recomputation(overrides, cache_implementation,
                                                                 transformers_logs):
    torch.manual_seed(0)
    model = ModernGPT2ForCausalLM(tiny_config(**overrides)).eval()
    prompt = torch.randint(1, VOCAB, (2, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            generated = model.generate(prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False,
                                       cache_implementation=cache_implementation)
    cache_notices = [m for m in transformers_logs if "past_key_values" in m or "deprecat" in m]
    assert cache_notices == []
    expected = prompt
    with torch.no_grad():
        for _ in range(8):
            next_token = model(expected, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            expected = torch.cat((expected, next_token), dim=1)
    assert torch.equal(generated, expected)


@pytest.mark.parametrize("name", ["cache", "past_key_values"])
def test_forward_reads_the_cache_under_either_name_and_returns_it(name, transformers_logs):
    model = ModernGPT2ForCausalLM(tiny_config(attn_logit_softcapping=3.0)).eval()
    ids = torch.randint(1, VOCAB, (1, 9))
    cache = DynamicCache(config=model.config)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("error")
        full = model(ids, use_cache=False).logits
        first = model(ids[:, :6], use_cache=True, **{name: cache})
        steps = [model(ids[:, i : i + 1], use_cache=True, **{name: cache}).logits for i in range(6, 9)]
        returned = getattr(first, CACHE_NAME)
    assert returned is cache and cache.get_seq_length() == 9
    torch.testing.assert_close(torch.cat([first.logits, *steps], dim=1), full, atol=1e-5, rtol=1e-5)
    assert [m for m in transformers_logs if "past_key_values" in m] == []


def test_classification_head_returns_the_cache_under_the_current_name():
    model = ModernGPT2ForSequenceClassification(tiny_config(num_labels=3)).eval()
    with torch.no_grad():
        output = model(torch.randint(1, VOCAB, (2, 5)), use_cache=True)
    assert getattr(output, CACHE_NAME).get_seq_length() == 5


def test_the_cache_under_both_names_at_once_is_refused():
    model = ModernGPT2ForCausalLM(tiny_config()).eval()
    first, second = DynamicCache(config=model.config), DynamicCache(config=model.config)
    with pytest.raises(ValueError, match="not both"):
        model(torch.randint(1, VOCAB, (1, 4)), cache=first, past_key_values=second)
