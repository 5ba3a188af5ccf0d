"""transformers' conventions for a causal LM, each checked with numbers: equal tokens or equal logits against full
recomputation, or against another path to the same result."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from moderngpt2 import ModernGPT2Config, ModernGPT2ForCausalLM, ModernGPT2ForSequenceClassification
from moderngpt2.modeling_moderngpt2 import CACHE_NAME

VOCAB = 71
NEW = 8
PER_LAYER = dict(use_per_layer_embedding=True, per_layer_vocab_size=30, per_layer_hidden_size=8)
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


def tiny_config(**overrides):
    # untied and a wide init: logits far from ties, so equal tokens are a real check
    return ModernGPT2Config(**{"model_size_name": "tiny", "vocab_size": VOCAB, "initializer_range": 0.2,
                               "tie_word_embeddings": False, "eos_token_id": None, "pad_token_id": 0,
                               "sliding_window": 4, "attn_logit_softcapping": 10.0, **overrides})


def tiny_model(**overrides):
    torch.manual_seed(0)
    return ModernGPT2ForCausalLM(tiny_config(**overrides)).eval()


def greedy(model, prompt, **kwargs):
    with torch.no_grad():
        return model.generate(prompt, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, **kwargs)


def recomputed(model, prompt, steps=NEW):
    ids = prompt
    with torch.no_grad():
        for _ in range(steps):
            ids = torch.cat((ids, model(ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)), dim=1)
    return ids


PROMPT = torch.randint(1, VOCAB, (2, 6), generator=torch.Generator().manual_seed(5))


# window 4 < 6 + 8 tokens: every sliding cache drops keys while generating. The offloaded caches move layers
# between a CUDA device and the CPU (they assert CUDA) and "quantized" needs optimum-quanto or hqq: not CPU tests.
@pytest.mark.parametrize("cache_implementation", ["dynamic", "static", "sliding_window", "hybrid"])
@pytest.mark.parametrize("overrides", [{}, PER_LAYER], ids=["plain", "per-layer"])
def test_every_cpu_cache_implementation_generates_what_recomputation_gives(cache_implementation, overrides):
    model = tiny_model(**overrides)
    assert torch.equal(greedy(model, PROMPT, cache_implementation=cache_implementation), recomputed(model, PROMPT))


def test_beam_search_with_the_cache_equals_beam_search_without():
    model = tiny_model()
    with_cache = greedy(model, PROMPT, num_beams=3, num_return_sequences=2)
    without = greedy(model, PROMPT, num_beams=3, num_return_sequences=2, use_cache=False)
    assert with_cache.shape == (4, 6 + NEW) and torch.equal(with_cache, without)


def test_sampled_return_sequences_with_the_cache_equal_those_without():
    model = tiny_model()
    runs = []
    for use_cache in (True, False):
        torch.manual_seed(7)
        with torch.no_grad():
            runs.append(model.generate(PROMPT, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=True,
                                       num_return_sequences=3, use_cache=use_cache))
    assert runs[0].shape == (6, 6 + NEW) and torch.equal(runs[0], runs[1])


def test_assisted_generation_equals_greedy():
    model, assistant = tiny_model(), ModernGPT2ForCausalLM(tiny_config(n_layer=1)).eval()
    prompt = PROMPT[:1]  # assisted decoding takes one sequence
    assert torch.equal(greedy(model, prompt, assistant_model=assistant), recomputed(model, prompt))


def test_attentions_during_cached_generation_cover_the_whole_cache():
    model = tiny_model(sliding_window=None, attn_implementation="eager")
    with torch.no_grad():
        out = model.generate(PROMPT, max_new_tokens=4, min_new_tokens=4, do_sample=False, output_attentions=True,
                             return_dict_in_generate=True)
    for step, layers in enumerate(out.attentions):
        for weights in layers:
            assert weights.shape[-1] == 6 + step  # keys: the prompt plus every token generated before
            torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights.sum(-1)))


def test_tuple_output_holds_the_dict_outputs_in_order():
    model = tiny_model()
    with torch.no_grad():
        as_dict = model(PROMPT, output_hidden_states=True, use_cache=False)
        as_tuple = model(PROMPT, output_hidden_states=True, use_cache=False, return_dict=False)
    assert len(as_dict.hidden_states) == model.config.num_hidden_layers + 1
    torch.testing.assert_close(as_tuple[0], as_dict.logits, atol=0, rtol=0)
    for ours, theirs in zip(as_tuple[1], as_dict.hidden_states):
        torch.testing.assert_close(ours, theirs, atol=0, rtol=0)


def test_generation_continues_from_a_returned_cache():
    model = tiny_model()
    whole = greedy(model, PROMPT)
    with torch.no_grad():
        first = model.generate(PROMPT, max_new_tokens=3, min_new_tokens=3, do_sample=False,
                               return_dict_in_generate=True)
        cache = getattr(first, "cache", None) or first.past_key_values
        rest = model.generate(first.sequences, max_new_tokens=NEW - 3, min_new_tokens=NEW - 3, do_sample=False,
                              **{CACHE_NAME: cache})
    assert torch.equal(rest, whole)


def test_left_padding_with_explicit_position_ids_matches_each_prompt_alone():
    model = tiny_model()
    short = PROMPT[:1, :3]
    batch = torch.cat((torch.cat((torch.zeros(1, 3, dtype=torch.long), short), dim=1), PROMPT[1:]))
    mask = (torch.arange(6) >= torch.tensor([[3], [0]])).long()
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        padded = model(batch, attention_mask=mask, position_ids=position_ids, use_cache=False).logits
        alone = model(short, use_cache=False).logits
    torch.testing.assert_close(padded[0, 3:], alone[0], atol=1e-5, rtol=1e-5)
    generated = greedy(model, batch, attention_mask=mask)
    assert torch.equal(generated[0, 6:], recomputed(model, short)[0, 3:])


def test_save_and_load_options_give_equal_logits(tmp_path):
    model = tiny_model(**PER_LAYER)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    with torch.no_grad():
        expected = model(PROMPT).logits
        for options in (dict(), dict(device_map="auto"), dict(dtype="auto"), dict(torch_dtype="auto"),
                        dict(low_cpu_mem_usage=True), dict(device_map="cpu", dtype="auto")):
            loaded = AutoModelForCausalLM.from_pretrained(tmp_path, **options).eval()
            assert loaded.dtype == torch.float32, options
            torch.testing.assert_close(loaded(PROMPT).logits, expected, atol=0, rtol=0, msg=str(options))


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_gradient_checkpointing_gives_the_same_gradients(use_reentrant):
    torch.manual_seed(0)
    config = tiny_config(**PER_LAYER, attn_implementation="eager")
    plain, checkpointed = ModernGPT2ForCausalLM(config), ModernGPT2ForCausalLM(config)
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
    for model in (plain, checkpointed):
        model.train()
        model(PROMPT, labels=PROMPT).loss.backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_attention_implementation_switched_after_load_gives_equal_logits():
    model = tiny_model(attn_logit_softcapping=None)  # sdpa has no softcap
    with torch.no_grad():
        before = model(PROMPT).logits
        model.set_attn_implementation("eager")
        assert model.attention_backend("cpu") == "eager"
        eager = model(PROMPT).logits
        model.set_attn_implementation("sdpa")
        assert model.attention_backend("cpu") == "sdpa"
        sdpa = model(PROMPT).logits
    torch.testing.assert_close(eager, before, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sdpa, before, atol=1e-5, rtol=1e-5)


def test_resize_token_embeddings_keeps_old_logits_and_the_embedding_convention():
    for overrides in ({}, PER_LAYER):
        model = tiny_model(**overrides)
        with torch.no_grad():
            before = model(PROMPT).logits
            model.resize_token_embeddings(VOCAB + 9)
            after = model(PROMPT).logits
            per_layer_ids = model.model.map_per_layer_ids(PROMPT) if overrides else None
            embedded = model(inputs_embeds=model.get_input_embeddings()(PROMPT), per_layer_input_ids=per_layer_ids)
            embedded = embedded.logits
        torch.testing.assert_close(after[..., :VOCAB], before, atol=0, rtol=0)
        torch.testing.assert_close(embedded, after, atol=0, rtol=0)


def test_sequence_classification_reads_the_last_real_token_of_a_padded_row():
    torch.manual_seed(0)
    model = ModernGPT2ForSequenceClassification(tiny_config(num_labels=3)).eval()
    row = PROMPT[:1, :4]
    for padded, mask in (
        (torch.cat((torch.zeros(1, 2, dtype=torch.long), row), dim=1), torch.tensor([[0, 0, 1, 1, 1, 1]])),
        (torch.cat((row, torch.zeros(1, 2, dtype=torch.long)), dim=1), torch.tensor([[1, 1, 1, 1, 0, 0]])),
    ):
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            torch.testing.assert_close(model(padded, attention_mask=mask, position_ids=position_ids).logits,
                                       model(row).logits, atol=1e-5, rtol=1e-5)
