"""`per_layer_embedding_demo.py` of the earlier per-layer-embedding tool: a tiny per-layer model, run once.

ModernGPT2's full equivalent is `moderngpt2 quickstart` (a small per-layer model trained end to end).
"""

import torch

from moderngpt2 import ModernGPT2ForCausalLM
from test_per_layer_config import get_tiny_config


def main() -> None:
    torch.manual_seed(0)
    config = get_tiny_config(vocab_size=1024)
    model = ModernGPT2ForCausalLM(config).eval()
    ids = torch.randint(0, config.vocab_size, (2, 16))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    per_layer = sum(p.numel() for name, p in model.named_parameters() if "per_layer" in name)
    print(f"logits {tuple(logits.shape)}, loss {loss.item():.3f} (about ln {config.vocab_size} = "
          f"{torch.log(torch.tensor(float(config.vocab_size))).item():.3f} untrained); per-layer parameters "
          f"{per_layer:,} of {model.num_parameters():,}. For a trained model: `moderngpt2 quickstart`.")


if __name__ == "__main__":
    main()
