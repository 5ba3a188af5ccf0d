"""Tensor-parallel worker: load checkpoints with transformers' TP plan and record logits and greedy tokens.

Launched by tests/test_tp_plan.py as `torchrun --standalone --nproc_per_node 2 tp_logits.py REQUEST.json`
(gloo on the CPU). Each rank writes `result-RANK.json` next to the request.
"""

import json
import os
import sys
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor

from transformers import AutoModelForCausalLM
from transformers.distributed import DistributedConfig

import moderngpt2  # noqa: F401  (registers the Auto classes)


def load_tensor_parallel(checkpoint):
    """`from_pretrained(checkpoint, tp_plan="auto")`, spelled the way transformers >= 5.17 asks for (the bare
    `tp_plan` keyword still works but warns that it is deprecated)."""
    return AutoModelForCausalLM.from_pretrained(checkpoint, distributed_config=DistributedConfig(tp_plan="auto"))


def describe(param):
    local = param.to_local() if isinstance(param, DTensor) else param
    return {"sharded": isinstance(param, DTensor), "global": list(param.shape), "local": list(local.shape)}


def main():
    request_path = Path(sys.argv[1])
    request = json.loads(request_path.read_text())
    rank = int(os.environ["RANK"])
    results = {"world_size": int(os.environ["WORLD_SIZE"])}
    for name, checkpoint in request["checkpoints"].items():
        model = load_tensor_parallel(checkpoint).eval()
        inputs = torch.load(Path(checkpoint) / "inputs.pt")
        with torch.no_grad():
            logits = model(**inputs).logits
            tokens = model.generate(inputs["input_ids"][:, :6], attention_mask=inputs["attention_mask"][:, :6],
                                    max_new_tokens=5, do_sample=False, pad_token_id=0)
        layer = model.model.layers[0]
        params = {
            "q_proj": layer.self_attn.q_proj.weight,
            "o_proj": layer.self_attn.o_proj.weight,
            "down_proj": layer.mlp.down_proj.weight,
        }
        if layer.per_layer_gate is not None:
            params["per_layer_gate.up_proj"] = layer.per_layer_gate.up_proj.weight
            params["embed_tokens_per_layer"] = model.model.embed_tokens_per_layer.weight
        results[name] = {
            "max_abs_diff": (logits - torch.load(Path(checkpoint) / "reference_logits.pt")).abs().max().item(),
            "tokens": tokens.tolist(),
            "params": {key: describe(param) for key, param in params.items()},
        }
    (request_path.parent / f"result-{rank}.json").write_text(json.dumps(results))
    torch.distributed.destroy_process_group()  # left to exit, gloo's threads can abort the process


if __name__ == "__main__":
    main()
