"""Where models run: the device (``auto``: cuda, then mps, then cpu), numeric precision and determinism.

The library follows the model: every loop (training, evaluation, calibration, BatchNorm recalibration, latency)
moves its batches to the device the model's parameters are on, so a caller picks the device once by moving the
model (:func:`place`).  Checkpoints always hold CPU tensors and load on any device.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterable, Iterator

import torch
from torch import nn

from .errors import PruneBenchError

PRECISIONS = ("fp32", "bf16", "fp16")
# native bfloat16 arithmetic on x86 (what makes bf16 autocast worth it on a CPU); elsewhere bf16 is emulated
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` (cuda, then mps, then cpu), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; a device this machine does
    not have is refused with one line (:class:`PruneBenchError`)."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise PruneBenchError(f"unknown device {spec!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise PruneBenchError(f"device {spec!r} asked for, but this machine has no CUDA GPU "
                                  f"(torch {torch.__version__}); use --device cpu or auto")
        index = 0 if device.index is None else device.index
        if index >= count:
            raise PruneBenchError(f"device {spec!r} asked for, but this machine has {count} CUDA GPU(s): "
                                  f"cuda:0..cuda:{count - 1}")
        return torch.device("cuda", index)
    if device.type == "mps":
        if not _mps_available():
            raise PruneBenchError(f"device {spec!r} asked for, but Apple's MPS backend is not available here")
        return device
    raise PruneBenchError(f"unsupported device {spec!r}; use auto, cpu, cuda, cuda:N or mps")


def device_name(device: torch.device | str) -> str:
    """What a result says it ran on: ``cuda:0 (NVIDIA H100 80GB HBM3)``, ``cpu (2 cores)``, ``mps``."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({os.cpu_count()} cores)"
    return str(device)


def device_of(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); cpu for a model with neither."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def to_device(batch, device: torch.device):
    """A tensor, or a tuple/list of them, on ``device`` (non-blocking from pinned memory; a no-op on its own
    device)."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(b, device) for b in batch)
    return batch


def batches_on(model: nn.Module, loader: Iterable) -> Iterator:
    """The loader's batches, moved to the model's device."""
    device = device_of(model)
    for batch in loader:
        yield to_device(batch, device)


def cpu_supports_bf16() -> bool:
    """Whether this CPU does bfloat16 arithmetic natively (Linux ``/proc/cpuinfo`` flags)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def check_precision(precision: str, device: torch.device) -> None:
    """Mixed precision only where the device computes in it: fp16 on a CUDA GPU or MPS (with a grad scaler on
    CUDA); bf16 on a GPU that has it or a CPU with native bfloat16 instructions."""
    if precision not in PRECISIONS:
        raise PruneBenchError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return
    if device.type == "cpu":
        if precision == "fp16":
            raise PruneBenchError("precision fp16 needs a GPU: this run is on the cpu (use fp32, or bf16 on a CPU "
                                  "with native bfloat16)")
        if not cpu_supports_bf16():
            raise PruneBenchError(f"precision bf16 on this CPU would be emulated (no {' or '.join(CPU_BF16_FLAGS)}"
                                  f" instructions): use fp32 here, or bf16 on a GPU")
    if device.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise PruneBenchError(f"precision bf16 is not supported by {device_name(device)}; use fp16 or fp32")


def autocast(device: torch.device, precision: str):
    """The forward passes' autocast context for ``precision`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """Loss scaling for fp16 on CUDA (small gradients underflow in half precision); disabled otherwise."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16" and device.type == "cuda")


def configure(device: torch.device, deterministic: bool = True) -> None:
    """Per-process backend settings: reproducible kernels when ``deterministic``, cuDNN's autotuner otherwise (it
    picks the fastest convolution algorithm per shape, which may differ between runs)."""
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS' reproducible workspace


def place(model: nn.Module, device: torch.device, channels_last: bool = False) -> nn.Module:
    """Move ``model`` to ``device`` (in place), in channels-last memory layout when asked (faster convolutions
    on tensor cores)."""
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model
