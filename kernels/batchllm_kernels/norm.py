"""RMSNorm with the residual add fused in: one Triton program per token row."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from batchllm_kernels.triton_util import next_pow2


@triton.jit
def rms_norm_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr,
    hidden, eps,
    stride_x, stride_res, stride_out, stride_res_out,
    HAS_RESIDUAL: tl.constexpr, BLOCK_H: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_H)
    mask = cols < hidden
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        x += tl.load(res_ptr + row * stride_res + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(res_out_ptr + row * stride_res_out + cols, x.to(res_out_ptr.dtype.element_ty), mask=mask)
    # The normalization uses the float32 sum, not its rounded copy (as the reference does).
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, 0) / hidden + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_out + cols, (x * rstd * w).to(out_ptr.dtype.element_ty), mask=mask)


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm(x [+ residual]) * weight; returns (out, residual_out) as in the ops contract."""
    # x, residual: [num_tokens, hidden]; weight: [hidden]
    if x.stride(-1) != 1:
        x = x.contiguous()
    if residual is not None and residual.stride(-1) != 1:
        residual = residual.contiguous()
    num_tokens, hidden = x.shape
    out = torch.empty((num_tokens, hidden), dtype=x.dtype, device=x.device)
    res_out = torch.empty_like(out) if residual is not None else x
    if num_tokens == 0:
        return out, res_out
    block = next_pow2(hidden)
    res = residual if residual is not None else x
    rms_norm_kernel[(num_tokens,)](
        x, res, weight, out, res_out,
        hidden, eps,
        x.stride(0), res.stride(0), out.stride(0), res_out.stride(0),
        HAS_RESIDUAL=residual is not None, BLOCK_H=block,
        num_warps=max(1, min(16, block // 256)),
    )
    return out, res_out
