"""The exported GGUF file run by llama.cpp itself (llama-cpp-python): same tokens, same logits, same greedy text.

Slow and optional: llama-cpp-python builds llama.cpp from source (long on two cores), so it is not part of
the `dev` extra; the test skips when `llama_cpp` is not importable. Install it with
`pip install llama-cpp-python` to run it.
"""

import copy

import numpy as np
import pytest
import torch

from moderngpt2.export.gguf import export_gguf

from test_export_gguf import CONFIGS, TEXTS, save_checkpoint

llama_cpp = pytest.importorskip("llama_cpp")

pytestmark = pytest.mark.slow
LOGIT_TOLERANCE = 1e-3
PROMPTS = ["the quick brown fox 3 jumps", "over the lazy dog 14, naïve café", "<|endoftext|>the lazy fox 7"]


@pytest.fixture(scope="module", params=list(CONFIGS))
def exported(request, tmp_path_factory):
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp(request.param)
    model, tokenizer = save_checkpoint(directory / "ours", **CONFIGS[request.param])
    path = export_gguf(directory / "ours", directory / "model.gguf", "f32")
    # a float32 KV cache (llama.cpp's default is float16), so the comparison measures the graph, not the cache
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, n_batch=64, logits_all=True, n_threads=1, verbose=False,
                          type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    return request.param, model, tokenizer, llm


def llama_logits(llm, ids):
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)])


def our_greedy(model, ids, new_tokens=32):
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=new_tokens, do_sample=False, pad_token_id=2,
                             eos_token_id=None)
    return out[0, len(ids):].tolist()


def llama_greedy(llm, ids, new_tokens=32):
    llm.reset()
    llm.eval(ids)
    tokens = []
    for _ in range(new_tokens):
        tokens.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([tokens[-1]])
    return tokens


def test_tokenization_matches(exported):
    _, _, tokenizer, llm = exported
    for text in PROMPTS + TEXTS[:5]:
        assert llm.tokenize(text.encode("utf-8"), add_bos=False, special=True) == tokenizer(text)["input_ids"], text


class Float16TableGelu(torch.nn.Module):
    """GELU as llama.cpp's CPU backend computes it: looked up in a table indexed by the float16-rounded input
    (GGML_GELU_FP16), identity above 10 and zero below -10."""

    def forward(self, x):
        looked_up = torch.nn.functional.gelu(x.half().float(), approximate="tanh").half().float()
        return torch.where(x <= -10, torch.zeros_like(x), torch.where(x >= 10, x, looked_up))


def test_logits_match(exported):
    """Within 1e-3 of our model run with llama.cpp's GELU table; the table alone costs a few 1e-3 more."""
    name, model, tokenizer, llm = exported
    emulated = copy.deepcopy(model)
    for layer in emulated.model.layers:
        layer.mlp.act_fn = Float16TableGelu()
    worst_exact = worst_emulated = 0.0
    for text in PROMPTS:
        ids = tokenizer(text)["input_ids"]
        theirs = llama_logits(llm, ids)
        with torch.no_grad():
            exact = model(torch.tensor([ids])).logits[0].numpy()
            table = emulated(torch.tensor([ids])).logits[0].numpy()
        worst_exact = max(worst_exact, float(np.abs(theirs - exact).max()))
        worst_emulated = max(worst_emulated, float(np.abs(theirs - table).max()))
    print(f"[{name}] max |logit diff| llama.cpp (f32) vs ModernGPT2: {worst_exact:.2e}; "
          f"vs ModernGPT2 with llama.cpp's GELU table: {worst_emulated:.2e}")
    assert worst_emulated < LOGIT_TOLERANCE
    assert worst_exact < 10 * LOGIT_TOLERANCE


def test_greedy_continuation_matches(exported):
    _, model, tokenizer, llm = exported
    for text in PROMPTS:
        ids = tokenizer(text)["input_ids"]
        assert llama_greedy(llm, ids) == our_greedy(model, ids), text


def test_unigram_tokenizer_in_llama_cpp(tmp_path, capsys):
    """Same ids for text the vocabulary covers; outside it llama.cpp's unigram has no byte fallback (warned)."""
    _, tokenizer = save_checkpoint(tmp_path / "ours", model_type="unigram", **CONFIGS["gemma2_like"])
    path = export_gguf(tmp_path / "ours", tmp_path / "model.gguf")
    assert "no byte fallback" in capsys.readouterr().out
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, n_threads=1, verbose=False)
    for text in TEXTS[:5] + ["  two  spaces ", "naïve café"]:
        assert llm.tokenize(text.encode("utf-8"), add_bos=False, special=True) == tokenizer(text)["input_ids"], text
    assert tokenizer("日")["input_ids"] == tokenizer.convert_tokens_to_ids(["<0xE6>", "<0x97>", "<0xA5>"])
    assert llm.tokenize("日".encode("utf-8"), add_bos=False, special=False) == [tokenizer.unk_token_id]


def test_q8_0_is_byte_identical_to_llama_cpp_quantizing_the_f32_file(tmp_path):
    """Our q8_0 file holds exactly the blocks llama.cpp's own quantizer makes from our f32 file."""
    import ctypes

    from gguf import GGUFReader

    save_checkpoint(tmp_path / "ours", **CONFIGS["gemma2_like"])
    f32 = export_gguf(tmp_path / "ours", tmp_path / "model-f32.gguf", "f32")
    ours = export_gguf(tmp_path / "ours", tmp_path / "model-q8_0.gguf", "q8_0")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = 7  # LLAMA_FTYPE_MOSTLY_Q8_0
    theirs = tmp_path / "llama-q8_0.gguf"
    assert llama_cpp.llama_model_quantize(str(f32).encode(), str(theirs).encode(), ctypes.byref(params)) == 0
    ours_tensors = {t.name: t for t in GGUFReader(ours).tensors}
    their_tensors = {t.name: t for t in GGUFReader(theirs).tensors}
    assert sorted(ours_tensors) == sorted(their_tensors)
    assert {t.tensor_type.name for t in ours_tensors.values()} == {"F32", "Q8_0"}
    for name, tensor in ours_tensors.items():
        assert tensor.tensor_type == their_tensors[name].tensor_type, name
        assert np.array_equal(np.asarray(tensor.data).view(np.uint8), np.asarray(their_tensors[name].data).view(np.uint8))


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_half_precision_files_keep_the_greedy_continuation(exported, tmp_path, dtype):
    name, model, tokenizer, _ = exported
    model.save_pretrained(tmp_path / "ours")
    tokenizer.save_pretrained(tmp_path / "ours")
    path = export_gguf(tmp_path / "ours", tmp_path / f"model-{dtype}.gguf", dtype)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, logits_all=True, n_threads=1, verbose=False)
    for text in PROMPTS:
        ids = tokenizer(text)["input_ids"]
        assert llama_greedy(llm, ids) == our_greedy(model, ids), (name, dtype, text)
