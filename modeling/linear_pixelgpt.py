"""PixelGPT's projection layer: a bias-free `nn.Linear` whose float32 CPU matmuls run through oneDNN on non-Intel
CPUs, where PyTorch's own (MKL's sgemm) is slow. The network (`modeling_pixelgpt.py`) builds every projection from
`PixelGPTLinear`; the sampling loops pack its weight once per loop (`sampling_pixelgpt.packed_weights`).
"""

import torch
import torch.nn.functional as F
from torch import nn

# oneDNN ships inside PyTorch's CPU builds (x86 and ARM); its compiled graphs call this matmul op.
ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def cpu_vendor() -> str:
    """The CPU's vendor string on Linux (`GenuineIntel`, `AuthenticAMD`, ...); empty where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as info:
            return next((line.split(":", 1)[1].strip() for line in info if line.startswith("vendor_id")), "")
    except OSError:
        return ""


# PyTorch's float32 CPU matmul is MKL's sgemm, which takes a slow path on non-Intel x86 CPUs (AMD EPYC: half
# oneDNN's speed at sampling sizes, 216 against 478 GFLOP/s at 2048^2). On Intel CPUs MKL is level with oneDNN in
# training and faster in sampling (Xeon, Sapphire Rapids: 1.3-1.5x more images/s one token per pass), so oneDNN is
# used elsewhere only.
PREFER_ONEDNN = ONEDNN and cpu_vendor() != "GenuineIntel"


def use_onednn(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether float32 CPU matmuls go through oneDNN here: on non-Intel CPUs (`PREFER_ONEDNN`), not under autocast,
    tracing or `torch.compile`, nor with `torch.backends.mkldnn.flags(enabled=False)`."""
    return (device.type == "cpu" and dtype == torch.float32 and PREFER_ONEDNN and torch.backends.mkldnn.enabled
            and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling()
            and not torch.jit.is_tracing())


def onednn_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`a @ b.T` for 2-D float32 CPU tensors through oneDNN; `b` may be a weight packed by `pack_weight`."""
    return torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """The weight in oneDNN's blocked layout: no re-arrangement per call (1.3-1.6x faster sampling matmuls)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach())


class PixelGPTLinearFunction(torch.autograd.Function):
    """`x @ W.T` with autograd for `(M, in)` rows: the output and the input gradient through oneDNN, the weight
    gradient (a sum over all M rows) through `torch.mm`, which was as fast or faster for that shape."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return onednn_matmul(x, weight)  # (M, out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_x = onednn_matmul(grad, weight.t()) if ctx.needs_input_grad[0] else None  # (M, in)
        grad_weight = grad.t() @ x if ctx.needs_input_grad[1] else None  # (out, in)
        return grad_x, grad_weight


class PixelGPTLinear(nn.Linear):
    """Bias-free `nn.Linear` (same weight, same state dict) whose float32 CPU matmuls run through oneDNN on
    non-Intel CPUs (see `PREFER_ONEDNN`).

    PyTorch's float32 CPU matmul is MKL's sgemm, which can run far below the chip's peak on AMD CPUs: on our
    benchmark machine (AVX-512 EPYC) 216 GFLOP/s against oneDNN's 478 at 2048^2, and half oneDNN's speed at the
    8- to 64-row matmuls of sampling. Intel CPUs, other devices and dtypes, autocast, tracing, `torch.compile` and
    one row against a small weight use `F.linear`, as does `torch.backends.mkldnn.flags(enabled=False)`. While a
    sampling loop runs, `packed` holds the weight in oneDNN's layout (`pack`, called by
    `sampling_pixelgpt.packed_weights`).
    """

    packed: torch.Tensor | None = None

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A wrong input width goes to F.linear too, for PyTorch's own error message.
        if (x.dim() == 0 or x.shape[-1] != self.in_features or x.dtype != self.weight.dtype
                or not use_onednn(x.device, x.dtype)):
            return F.linear(x, self.weight)
        num_rows = x.numel() // self.in_features
        # One row against a small weight (one image from a small model) is a matrix-vector product that stays in
        # cache: MKL's gemv beats oneDNN's ~10 us fixed cost per call there. Bigger products are faster in oneDNN
        # (measured at batch 1 with 128- and 256-wide models: 0.62 vs 0.92 and 3.2 vs 2.3 ms per token).
        if num_rows == 0 or (num_rows == 1 and self.weight.numel() < 2**17):
            return F.linear(x, self.weight)
        rows = x.reshape(-1, self.in_features)  # (M, in)
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            out = PixelGPTLinearFunction.apply(rows, self.weight)
        else:
            out = onednn_matmul(rows, self.weight if self.packed is None else self.packed)
        return out.view(*x.shape[:-1], self.out_features)  # (..., out)

    def pack(self) -> None:
        """Keep the weight in oneDNN's blocked layout for repeated inference calls (no re-arrangement per call:
        1.3-1.6x faster sampling matmuls); nothing where oneDNN is not used. Call `unpack` after."""
        if use_onednn(self.weight.device, self.weight.dtype):
            self.packed = pack_weight(self.weight)

    def unpack(self) -> None:
        self.packed = None


__all__ = ["ONEDNN", "PREFER_ONEDNN", "PixelGPTLinear", "onednn_matmul"]
