"""Devices and dtypes, named once: every command picks its device, its dtype and its MFU peak here."""

import torch

from .errors import UserError

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# Short spellings users bring from other tools (`--bf16`, Megatron, llama.cpp); each means the long name.
DTYPE_ALIASES = {"fp32": "float32", "f32": "float32", "bf16": "bfloat16", "fp16": "float16", "f16": "float16",
                 "half": "float16", "float": "float32"}
# bf16 matmul peak measured on one H100 for our anchors (the datasheet's dense figure is 989); the H200,
# H800 and GH200 have the same compute.
HOPPER_BF16_PEAK_TFLOPS = 790.0
HOPPER_NAMES = ("H100", "H200", "H800", "GH200")


def dtype_name(name: str, flag: str = "--dtype", allowed=tuple(DTYPES)) -> str:
    """The long name (bfloat16, float16, float32) of a dtype given in any spelling, or a one-line error."""
    canonical = DTYPE_ALIASES.get(name.lower(), name.lower()) if isinstance(name, str) else name
    if canonical not in allowed:
        raise UserError(f"{flag} {name}: choose one of {', '.join(allowed)}")
    return canonical


def pick_device(name: str = "auto", flag: str = "--device") -> torch.device:
    """`auto` is the CUDA device when there is one, else the CPU; a named device must exist here."""
    if name == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"{flag} {name}: not a device name; use auto, cuda, cuda:N or cpu") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"{flag} {name}: no CUDA device is available here; use {flag} cpu")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    return device


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` is bf16 on a CUDA device that supports it, else float32; any other name is taken as given."""
    if name == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float32
    return DTYPES[dtype_name(name)]


def is_hopper(device: torch.device | None = None) -> bool:
    """Whether the (given or current) CUDA device is an H100-class GPU, whose bf16 peak we have measured."""
    if not torch.cuda.is_available() or (device is not None and device.type != "cuda"):
        return False
    return any(key in torch.cuda.get_device_name(device) for key in HOPPER_NAMES)


def default_peak_tflops(device: torch.device | None = None, dtype: str = "bfloat16") -> float | None:
    """The bf16 peak of the device when we know it (H100-class); MFU is only reported against a known peak."""
    return HOPPER_BF16_PEAK_TFLOPS if dtype == "bfloat16" and is_hopper(device) else None
