"""Document-aware masks for packed sequences: a packed row gives each document what a forward over it alone gives."""

import pytest
import torch

from moderngpt2 import ModernGPT2Config, ModernGPT2ForCausalLM
from moderngpt2.attention_moderngpt2 import select_attention_backend
from moderngpt2.bench.common import graph_break_count, reset_compiler
from moderngpt2.training.data import collate_blocks, document_ids_from_eos

VOCAB, EOS = 61, 60
# Row 0: documents of 5, 4 and 3 tokens (the last one unfinished); row 1: 2, 7 and 3. Each document ends with EOS.
LENGTHS = [[5, 4, 3], [2, 7, 3]]
SETTINGS = {
    "eager-softcap-window": (dict(attn_logit_softcapping=20.0, final_logit_softcapping=15.0, sliding_window=3),
                             "eager"),
    "sdpa-dense-mask": (dict(), "sdpa"),
    "flex-block-mask": (dict(attn_logit_softcapping=20.0, sliding_window=3), "flex_attention"),
    "eager-per-layer": (dict(use_per_layer_embedding=True, per_layer_vocab_size=40, per_layer_hidden_size=8),
                        "eager"),
}


def packed_rows():
    generator = torch.Generator().manual_seed(5)
    rows, documents = [], []
    for lengths in LENGTHS:
        docs = [torch.randint(0, EOS, (n,), generator=generator) for n in lengths]
        for doc in docs[:-1]:
            doc[-1] = EOS
        rows.append(torch.cat(docs))
        documents.append(docs)
    return torch.stack(rows), documents


def build_model(name):
    overrides, backend = SETTINGS[name]
    config = ModernGPT2Config(model_size_name="tiny", vocab_size=VOCAB, eos_token_id=EOS,
                              attn_implementation=backend, **overrides)
    model = ModernGPT2ForCausalLM(config)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    return model.eval()


def test_document_ids_count_the_eos_tokens_before_each_position():
    ids = torch.tensor([[7, EOS, 3, 4, EOS, EOS, 9], [EOS, 1, 2, 3, 4, 5, 6]])
    assert document_ids_from_eos(ids, EOS).tolist() == [[0, 0, 1, 1, 1, 2, 3], [0, 1, 1, 1, 1, 1, 1]]
    batch = collate_blocks([{"input_ids": row} for row in ids], document_eos_id=EOS)
    assert torch.equal(batch["document_ids"], document_ids_from_eos(ids, EOS)) and torch.equal(batch["labels"], ids)
    assert "document_ids" not in collate_blocks([{"input_ids": row} for row in ids])


@pytest.mark.parametrize("name", list(SETTINGS))
def test_packed_documents_give_the_logits_of_separate_forwards(name):
    model = build_model(name)
    ids, documents = packed_rows()
    document_ids = document_ids_from_eos(ids, EOS)
    with torch.no_grad():
        packed = model(ids, document_ids=document_ids).logits
        unmasked = model(ids).logits
        for row, docs in enumerate(documents):
            start = 0
            for doc in docs:
                alone = model(doc[None]).logits[0]
                span = slice(start, start + len(doc))
                torch.testing.assert_close(packed[row, span], alone, atol=1e-5, rtol=1e-5)
                if start > 0:  # negative control: without the mask, later documents see the earlier ones
                    assert (unmasked[row, span] - alone).abs().max() > 1e-3
                start += len(doc)


def test_training_with_document_ids_matches_separate_documents_in_loss():
    model = build_model("eager-softcap-window")
    ids, documents = packed_rows()
    labels = ids.clone()
    packed_loss = model(ids, labels=labels, document_ids=document_ids_from_eos(ids, EOS),
                        num_items_in_batch=1).loss
    # The summed loss of the packed rows: every document on its own, plus the EOS -> next-document predictions,
    # which see only their own document too, so the first token of each next document is predicted from it.
    expected = 0.0
    with torch.no_grad():
        for row, docs in enumerate(documents):
            for i, doc in enumerate(docs):
                targets = doc if i + 1 == len(docs) else torch.cat((doc, docs[i + 1][:1]))
                logits = model(doc[None], return_logits=True).logits[0]
                expected = expected + torch.nn.functional.cross_entropy(
                    logits[: len(targets) - 1], targets[1:], reduction="sum")
    torch.testing.assert_close(packed_loss.detach(), expected, atol=1e-4, rtol=1e-5)


def test_document_ids_are_refused_with_cached_content():
    model = build_model("eager-softcap-window")
    ids, _ = packed_rows()
    with torch.no_grad():
        cache = model(ids[:, :4], use_cache=True).past_key_values
        with pytest.raises(ValueError, match="document_ids describe whole sequences"):
            model(ids[:, 4:6], past_key_values=cache, document_ids=torch.zeros(2, 2, dtype=torch.long))


@pytest.mark.parametrize("softcap", [None, 20.0])
def test_document_masks_pick_flex_on_cuda_and_eager_elsewhere(softcap):
    config = ModernGPT2Config(model_size_name="tiny", vocab_size=VOCAB, attn_logit_softcapping=softcap)
    config.attn_implementation_is_automatic = True
    assert select_attention_backend(config, "cuda", None, False, True, document_mask=True) == "flex_attention"
    assert select_attention_backend(config, "cpu", None, False, True, document_mask=True) == "eager"
    plain = "sdpa" if softcap is None else "flex_attention"
    assert select_attention_backend(config, "cuda", None, False, True, document_mask=False) == plain


def test_compiled_training_step_with_document_ids_has_no_graph_breaks():
    reset_compiler()
    model = build_model("eager-per-layer").train()
    ids, _ = packed_rows()
    compiled = torch.compile(model, backend="eager")
    loss = compiled(input_ids=ids, labels=ids, document_ids=document_ids_from_eos(ids, EOS)).loss
    loss.backward()
    assert torch.isfinite(loss) and model.lm_head.weight.grad is not None
    assert graph_break_count() == 0
    reset_compiler()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compiled_flex_block_mask_on_cuda_equals_separate_eager_forwards():
    model = build_model("eager-softcap-window").cuda()
    ids, documents = packed_rows()
    ids = ids.cuda()
    flex_config = model.config
    with torch.no_grad():
        flex_config.attn_implementation_is_automatic = True  # the automatic choice: flex on CUDA with documents
        assert model.attention_backend("cuda", document_mask=True) == "flex_attention"
        packed = model(ids, document_ids=document_ids_from_eos(ids, EOS)).logits
        flex_config.attn_implementation_is_automatic = False
        for row, docs in enumerate(documents):
            start = 0
            for doc in docs:
                alone = model(doc[None].cuda()).logits[0]  # eager, as configured
                torch.testing.assert_close(packed[row, start:start + len(doc)], alone, atol=1e-4, rtol=1e-4)
                start += len(doc)
