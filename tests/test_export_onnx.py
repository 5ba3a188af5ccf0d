"""ONNX: torch's dynamo exporter with a padding mask and dynamic batch/sequence sizes, run by onnxruntime.

The graph is exported once on a padded batch, then fed other shapes, other padding and no padding at all: a
data-dependent branch on the mask (or a traced-in shape) would show up as wrong logits or a failed export.
"""

import numpy as np
import pytest
import torch

from moderngpt2 import ModernGPT2Config, ModernGPT2ForCausalLM

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

TOLERANCE = 1e-5
VOCAB = 96
CONFIGS = {
    "sdpa_gqa": dict(),  # no softcap, no window: the sdpa backend
    "eager_softcap_window_ple": dict(attn_logit_softcapping=20.0, final_logit_softcapping=15.0, sliding_window=4,
                                     use_per_layer_embedding=True, per_layer_vocab_size=40, per_layer_hidden_size=8),
}


class LogitsOnly(torch.nn.Module):
    """The exported signature: (input_ids, attention_mask) -> logits, no cache."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def padded(batch, length, pad, seed):
    input_ids = torch.randint(1, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, :pad] = 0
    return input_ids, attention_mask


@pytest.mark.parametrize("name", list(CONFIGS))
def test_dynamo_onnx_export_matches_with_a_mask(name, tmp_path):
    torch.manual_seed(0)
    model = ModernGPT2ForCausalLM(ModernGPT2Config(model_size_name="tiny", vocab_size=VOCAB, pad_token_id=0,
                                                   **CONFIGS[name]))
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    wrapper = LogitsOnly(model.eval())
    dims = {0: torch.export.Dim("batch", max=64), 1: torch.export.Dim("sequence", max=128)}
    torch.onnx.export(wrapper, padded(2, 10, 3, seed=1), str(tmp_path / "model.onnx"), dynamo=True,
                      input_names=["input_ids", "attention_mask"], output_names=["logits"],
                      dynamic_shapes={"input_ids": dims, "attention_mask": dims})
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    cases = [padded(2, 10, 3, seed=1), padded(3, 17, 6, seed=2), padded(1, 7, 0, seed=3)]  # the last: no padding
    for input_ids, attention_mask in cases:
        (logits,) = session.run(None, {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()})
        with torch.no_grad():
            expected = wrapper(input_ids, attention_mask).numpy()
        valid = attention_mask.bool().numpy()
        assert logits.shape == expected.shape
        assert np.abs(logits - expected)[valid].max() < TOLERANCE
