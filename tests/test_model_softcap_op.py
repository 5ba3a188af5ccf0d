"""`moderngpt2::softcap_tanh`, the attention softcap's tanh on CUDA: its eager, fake, autograd and vmap paths on the
CPU, its Inductor lowering's registration, and that the score_mod uses it on CUDA only."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx
from torch.nn.attention.flex_attention import flex_attention

from moderngpt2.attention_moderngpt2 import _softcap_score_mod
from moderngpt2.softcap_moderngpt2 import (
    hardware_tanh_element,
    has_hardware_tanh,
    register_inductor_lowering,
    softcap_tanh_function,
)

softcap_tanh = torch.ops.moderngpt2.softcap_tanh


def test_eager_op_is_tanh_with_tanh_gradient():
    x = torch.linspace(-6, 6, 101, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(softcap_tanh(x), torch.tanh(x), atol=0, rtol=0)
    assert torch.autograd.gradcheck(softcap_tanh, (x,))
    (grad,) = torch.autograd.grad(softcap_tanh(x).sum(), x)
    torch.testing.assert_close(grad, 1 - torch.tanh(x.detach()) ** 2, atol=1e-12, rtol=0)


def test_fake_and_meta_tensors_keep_shape_dtype_and_strides():
    with FakeTensorMode():
        fake = torch.empty(2, 3, 5, dtype=torch.bfloat16).transpose(1, 2)
        out = softcap_tanh(fake)
        assert out.shape == fake.shape and out.dtype == torch.bfloat16 and out.stride() == fake.stride()
    meta = softcap_tanh(torch.empty(4, 7, device="meta"))
    assert meta.device.type == "meta" and meta.shape == (4, 7)


def test_opcheck_passes():
    x = torch.randn(3, 8, requires_grad=True)
    torch.library.opcheck(softcap_tanh.default, (x,))


def test_the_op_survives_flex_vmap_and_gives_the_plain_tanh_scores():
    """Uncompiled flex vmaps the score_mod: the op's vmap rule must hold, and on the CPU it equals torch.tanh."""
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 16, 8, generator=generator) * 4 for _ in range(3))

    def score_mod_with(tanh):
        return lambda score, b, h, q_idx, kv_idx: 5.0 * tanh(score / 5.0)

    with_op = flex_attention(q, k, v, score_mod=score_mod_with(softcap_tanh))
    with_tanh = flex_attention(q, k, v, score_mod=score_mod_with(torch.tanh))
    no_cap = flex_attention(q, k, v)
    torch.testing.assert_close(with_op, with_tanh, atol=1e-6, rtol=1e-6)
    assert (with_op - no_cap).abs().max() > 1e-2  # the softcap matters at these score magnitudes


@pytest.mark.parametrize("device_type, hardware", [("cuda", True), ("cpu", False), ("mps", False), ("xpu", False),
                                                    ("meta", False)])
def test_the_hardware_tanh_is_picked_on_cuda_only(device_type, hardware, monkeypatch):
    monkeypatch.setattr(torch.version, "hip", None)
    assert has_hardware_tanh(device_type) is hardware
    for dtype in (torch.bfloat16, torch.float16):
        assert (softcap_tanh_function(device_type, dtype) is softcap_tanh) is hardware
    # float32 attention keeps the exact tanh: the approximation's 2^-11 would show at float32 tolerances
    assert softcap_tanh_function(device_type, torch.float32) is torch.tanh
    monkeypatch.setattr(torch.version, "hip", "6.2")  # ROCm also says 'cuda' but has no PTX
    assert not has_hardware_tanh(device_type)


def ops_in_score_mod(device_type, dtype=torch.bfloat16):
    score_mod = _softcap_score_mod(30.0, device_type, dtype)
    scalars = [torch.tensor(1.5)] + [torch.tensor(0)] * 4
    graph = make_fx(score_mod)(*scalars).graph
    return {str(node.target) for node in graph.nodes if node.op == "call_function"}


def test_the_score_mod_uses_the_op_on_cuda_and_tanh_elsewhere(monkeypatch):
    monkeypatch.setattr(torch.version, "hip", None)
    cuda_ops, cpu_ops = ops_in_score_mod("cuda"), ops_in_score_mod("cpu")
    assert "moderngpt2.softcap_tanh.default" in cuda_ops and "aten.tanh.default" not in cuda_ops
    assert "aten.tanh.default" in cpu_ops and "moderngpt2.softcap_tanh.default" not in cpu_ops
    assert ops_in_score_mod("cuda", torch.float32) == cpu_ops


def test_inductor_lowering_is_registered_for_the_op():
    from torch._inductor.lowering import lowerings

    assert register_inductor_lowering()
    assert softcap_tanh.default in lowerings


def test_the_lowering_emits_the_ptx_instruction():
    """What Inductor's Triton backend turns into `tl.inline_asm_elementwise`, read through its mock handler."""
    from torch._inductor.ops_handler import MockHandler
    from torch._inductor.virtualized import V

    with V.set_ops_handler(MockHandler()):
        code = str(hardware_tanh_element("score"))
    assert "inline_asm_elementwise" in code and "tanh.approx.f32 $0, $1;" in code and "score" in code


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compiled_flex_on_cuda_runs_the_ptx_tanh_close_to_the_exact_one():
    from torch._inductor.utils import run_and_get_code

    generator = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(2, 4, 256, 64, device="cuda", generator=generator, dtype=torch.bfloat16)
               .mul(3).requires_grad_() for _ in range(3))

    def attend(score_mod):
        torch._dynamo.reset()
        out, code = run_and_get_code(torch.compile(flex_attention), q, k, v, score_mod=score_mod)
        grads = torch.autograd.grad(out.float().square().sum(), (q, k, v))
        return out.float(), grads, "\n".join(code)

    hardware = _softcap_score_mod(20.0, "cuda", torch.bfloat16)
    exact = _softcap_score_mod(20.0, "cpu", torch.bfloat16)  # torch.tanh
    out, grads, code = attend(hardware)
    ref_out, ref_grads, ref_code = attend(exact)
    assert "tanh.approx.f32" in code and "tanh.approx.f32" not in ref_code
    torch.testing.assert_close(out, ref_out, atol=2e-2, rtol=2e-2)
    for grad, ref in zip(grads, ref_grads):
        assert ((grad.float() - ref.float()).norm() / ref.float().norm()).item() < 2e-2
