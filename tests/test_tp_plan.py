"""Tensor parallelism through transformers' TP plan: two gloo processes on the CPU reproduce one process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from moderngpt2 import ModernGPT2Config, ModernGPT2ForCausalLM

WORKER = Path(__file__).parent / "workers" / "tp_logits.py"
VOCAB = 96
CONFIGS = {
    "plain": dict(attn_logit_softcapping=20.0, final_logit_softcapping=15.0, sliding_window=4),
    "per_layer": dict(use_per_layer_embedding=True, per_layer_vocab_size=40, per_layer_hidden_size=8),
}


def build_model(name):
    config = ModernGPT2Config(model_size_name="tiny", vocab_size=VOCAB, pad_token_id=0, **CONFIGS[name])
    model = ModernGPT2ForCausalLM(config)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    return model.eval()


@pytest.mark.slow
def test_tensor_parallel_matches_single_process(tmp_path):
    torch.manual_seed(0)
    input_ids = torch.randint(1, VOCAB, (2, 10), generator=torch.Generator().manual_seed(3))
    attention_mask = torch.ones_like(input_ids)
    input_ids[1, :2], attention_mask[1, :2] = 0, 0
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    expected_tokens = {}
    for name in CONFIGS:
        model = build_model(name)
        model.save_pretrained(tmp_path / name)
        with torch.no_grad():
            torch.save(model(**inputs).logits, tmp_path / name / "reference_logits.pt")
            expected_tokens[name] = model.generate(input_ids[:, :6], attention_mask=attention_mask[:, :6],
                                                   max_new_tokens=5, do_sample=False, pad_token_id=0).tolist()
        torch.save(inputs, tmp_path / name / "inputs.pt")
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"checkpoints": {name: str(tmp_path / name) for name in CONFIGS}}))

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(WORKER), str(request)]
    env_overrides = {"OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    done = subprocess.run(command, env={**os.environ, **env_overrides}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]

    for rank in (0, 1):
        result = json.loads((tmp_path / f"result-{rank}.json").read_text())
        assert result["world_size"] == 2
        for name in CONFIGS:
            got = result[name]
            print(f"[{name}] rank {rank}: max |logit diff| vs one process {got['max_abs_diff']:.3e}")
            assert got["max_abs_diff"] < 1e-5
            assert got["tokens"] == expected_tokens[name]
            params = got["params"]
            # q_proj (64 -> 4 heads x 16) is split by output rows, o_proj and down_proj by input columns
            assert params["q_proj"] == {"sharded": True, "global": [64, 64], "local": [32, 64]}
            assert params["o_proj"] == {"sharded": True, "global": [64, 64], "local": [64, 32]}
            assert params["down_proj"] == {"sharded": True, "global": [64, 256], "local": [64, 128]}
            if name == "per_layer":  # not in the TP plan: replicated on every rank
                assert params["per_layer_gate.up_proj"] == {"sharded": False, "global": [64, 8], "local": [64, 8]}
                assert params["embed_tokens_per_layer"]["sharded"] is False
