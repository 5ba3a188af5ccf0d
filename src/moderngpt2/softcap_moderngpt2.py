"""The attention softcap's tanh on the GPU's hardware approximation, as the torch custom op `moderngpt2::softcap_tanh`.

Inside the compiled FlexAttention kernel the softcap `c * tanh(s / c)` runs on every score, forward and backward.
Triton's `tanh` is a multi-instruction libdevice routine; PTX has `tanh.approx.f32`, one instruction on the special
function unit, with a relative error of about 2^-11, below bf16's resolution (2^-8). Flex takes the score_mod as
Python and lowers it through Inductor, so the approximation enters as a custom op with an Inductor lowering that
emits the instruction as inline assembly:

- eager and fake (meta) implementations: plain `torch.tanh`, on any device;
- autograd: d tanh(x) = 1 - tanh(x)^2, written through the op's output, so backward needs no second tanh;
- vmap (flex's uncompiled path vmaps the score_mod): the op itself, it is elementwise;
- Inductor lowering (registered on first use on CUDA): `tanh.approx.f32` through `ops.inline_asm_elementwise`.

The op is used only where the instruction exists (CUDA, not ROCm) and only for 16-bit attention inputs, where the
approximation is below the inputs' own resolution; float32 attention and every other device keep `torch.tanh`. This module imports only torch, so it travels next to a checkpoint with the attention file.
"""

import functools

import torch

OP_NAME = "moderngpt2::softcap_tanh"
PTX_TANH = "tanh.approx.f32 $0, $1;"


def _define_op():
    """Register the op once per process: the package and a remote-code copy of this file may both be imported."""

    @torch.library.custom_op(OP_NAME, mutates_args=())
    def softcap_tanh(x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x)

    @softcap_tanh.register_fake
    def _(x):
        return torch.empty_like(x)

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad * (1 - y * y)

    softcap_tanh.register_autograd(backward, setup_context=setup_context)

    @softcap_tanh.register_vmap
    def _(info, in_dims, x):
        return torch.ops.moderngpt2.softcap_tanh(x), in_dims[0]


if not hasattr(torch.ops.moderngpt2, "softcap_tanh"):
    _define_op()


@functools.cache
def register_inductor_lowering() -> bool:
    """Lower the op to `tanh.approx.f32` in Inductor's Triton code; False where this torch cannot.

    Deferred to the first CUDA use: importing Inductor costs seconds and the CPU never needs it.
    """
    try:
        from torch._inductor.lowering import lowerings, make_pointwise, register_lowering
    except ImportError:
        return False
    op = torch.ops.moderngpt2.softcap_tanh
    if op.default not in lowerings:
        register_lowering(op, type_promotion_kind=None)(make_pointwise(hardware_tanh_element))
    return True


def hardware_tanh_element(x):
    """Inductor's per-element code of the op: the PTX instruction as inline assembly, on float32 registers."""
    from torch._inductor.virtualized import ops

    return ops.inline_asm_elementwise(x, asm=PTX_TANH, dtype=torch.float32, is_pure=True, pack=1)


def has_hardware_tanh(device_type: str) -> bool:
    """Whether `tanh.approx.f32` exists on this device type: NVIDIA CUDA only (ROCm also reports 'cuda')."""
    return device_type == "cuda" and torch.version.hip is None


def softcap_tanh_function(device_type: str, dtype: torch.dtype):
    """The tanh the attention softcap uses for `dtype` inputs on `device_type`: the hardware approximation for
    16-bit inputs where it exists (and its lowering can be registered), plain `torch.tanh` elsewhere."""
    if has_hardware_tanh(device_type) and dtype.itemsize == 2 and register_inductor_lowering():
        return torch.ops.moderngpt2.softcap_tanh
    return torch.tanh
