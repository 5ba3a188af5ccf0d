"""`moderngpt2 evaluate --tasks`: lm-evaluation-harness on our model (per-layer embeddings included), offline.

Two local tasks over JSON files the test writes: a log-likelihood multiple choice task, whose accuracy is
recomputed here from our own model's log-likelihoods, and a generate-until task whose one matching target is
our own greedy continuation (so exact_match must be exactly 1/2).
"""

import json

import pytest
import torch

from moderngpt2 import ModernGPT2Config, ModernGPT2ForCausalLM, cli
from moderngpt2.tokenization import train_tokenizer

pytest.importorskip("lm_eval")

VOCAB = 320
WORDS = "red green blue cat dog bird sun moon tree river stone cloud".split()
TEXTS = [" ".join(WORDS[(i * k) % len(WORDS)] for k in range(1, 9)) for i in range(60)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("ple_model")
    config = ModernGPT2Config(model_size_name="tiny", vocab_size=VOCAB, use_per_layer_embedding=True,
                              per_layer_vocab_size=64, per_layer_hidden_size=8, eos_token_id=0, pad_token_id=2)
    model = ModernGPT2ForCausalLM(config)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.3)
    model.eval().save_pretrained(directory)
    tokenizer = train_tokenizer(TEXTS, vocab_size=300, progress=False)
    tokenizer.save_pretrained(directory)
    return model, tokenizer, directory


def continuation_logprob(model, tokenizer, context, continuation):
    """log p(continuation | context) the way lm-eval splits it: tokens of context+continuation past the context's."""
    whole = tokenizer(context + continuation)["input_ids"]
    context_length = len(tokenizer(context)["input_ids"])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([whole]), use_cache=False).logits[0].float(), dim=-1)
    return sum(logprobs[i - 1, whole[i]].item() for i in range(context_length, len(whole)))


def greedy_continuation(model, tokenizer, prompt, new_tokens=8):
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=new_tokens, do_sample=False, use_cache=False, pad_token_id=2,
                             eos_token_id=None)
    return tokenizer.decode(out[0, ids.shape[1]:]).split("\n")[0]


def write_tasks(directory, choice_docs, generate_docs):
    for name, docs in (("choice", choice_docs), ("continue", generate_docs)):
        (directory / f"{name}.jsonl").write_text("".join(json.dumps(doc) + "\n" for doc in docs))
    common = "dataset_path: json\ntest_split: test\n"
    (directory / "tiny_choice.yaml").write_text(
        "task: tiny_choice\n" + common +
        f"dataset_kwargs:\n  data_files:\n    test: {directory / 'choice.jsonl'}\n"
        "output_type: multiple_choice\ndoc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{answer}}'\nmetric_list:\n  - metric: acc\n")
    (directory / "tiny_continue.yaml").write_text(
        "task: tiny_continue\n" + common +
        f"dataset_kwargs:\n  data_files:\n    test: {directory / 'continue.jsonl'}\n"
        "output_type: generate_until\ndoc_to_text: '{{prompt}}'\ndoc_to_target: '{{target}}'\n"
        "generation_kwargs:\n  until: ['\\n']\n  max_gen_toks: 8\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n")


def test_local_tasks_score_what_our_model_computes(checkpoint, tmp_path, capsys):
    model, tokenizer, directory = checkpoint
    choice_docs = [{"question": " ".join(WORDS[i:i + 3]), "choices": [WORDS[(i + k) % 12] for k in (3, 5, 7)],
                    "answer": i % 3} for i in range(9)]
    expected_hits = 0
    for doc in choice_docs:
        scores = [continuation_logprob(model, tokenizer, doc["question"], " " + choice) for choice in doc["choices"]]
        expected_hits += int(max(range(3), key=scores.__getitem__) == doc["answer"])
    prompts = ["red green blue", "cat dog"]
    generate_docs = [{"prompt": prompts[0], "target": greedy_continuation(model, tokenizer, prompts[0])},
                     {"prompt": prompts[1], "target": "certainly not this"}]
    write_tasks(tmp_path, choice_docs, generate_docs)

    out = tmp_path / "results.json"
    code = cli.main(["evaluate", "--model", str(directory), "--tasks", "tiny_choice,tiny_continue",
                     "--include_path", str(tmp_path), "--device", "cpu", "--batch_size", "4",
                     "--output_json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    results = json.loads(out.read_text())["results"]
    assert results["tiny_choice"]["acc,none"] == pytest.approx(expected_hits / len(choice_docs))
    assert results["tiny_continue"]["exact_match,none"] == pytest.approx(0.5)
    assert "tiny_choice" in printed and "acc" in printed and "exact_match" in printed  # lm-eval's table


def test_limit_and_fewshot_reach_the_harness(checkpoint, tmp_path):
    _, _, directory = checkpoint
    write_tasks(tmp_path, [{"question": "red", "choices": ["cat", "dog"], "answer": 0}] * 5,
                [{"prompt": "red", "target": "x"}])
    out = tmp_path / "results.json"
    assert cli.main(["evaluate", "--model", str(directory), "--tasks", "tiny_choice", "--include_path",
                     str(tmp_path), "--device", "cpu", "--limit", "2", "--num_fewshot", "1",
                     "--output_json", str(out)]) == 0
    written = json.loads(out.read_text())
    assert written["n-samples"]["tiny_choice"]["effective"] == 2
    assert written["configs"]["tiny_choice"]["num_fewshot"] == 1


@pytest.mark.parametrize("argv, message", [
    (["--tasks", "no_such_task_anywhere"], "unknown task(s) no_such_task_anywhere"),
    (["--tasks", " , "], "--tasks is empty"),
    ([], "give either --input"),
    (["--tasks", "x", "--include_path", "/nonexistent/tasks"], "--include_path /nonexistent/tasks"),
    (["--tasks", "tiny_choice", "--framework", "jax"], "drop --framework jax"),
])
def test_bad_task_flags_are_one_line(checkpoint, capsys, argv, message):
    _, _, directory = checkpoint
    code = cli.main(["evaluate", "--model", str(directory), "--device", "cpu", *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
