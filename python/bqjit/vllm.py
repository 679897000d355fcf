"""Entry points with vLLM's signatures, so a vLLM user can swap ops by name.

=========================================== =============================================
vLLM                                        bqjit
=========================================== =============================================
``silu_and_mul_per_block_quant(out, input,  ``silu_mul_quant(input, group_size, out.dtype,
scales, group_size, scale_ub,               "col" if is_scale_transposed else "row",
is_scale_transposed)``                      False, scale_ub, out=out, scales_out=scales)``
``silu_mul_fp8_quant_deep_gemm_cuda(y,      ``silu_mul_quant_masked(y, tokens_per_expert,
tokens_per_expert, num_parallel_tokens,     group_size, torch.float8_e4m3fn, "col",
group_size)`` (and ``use_ue8m0``)           use_ue8m0)``
=========================================== =============================================

Numerics: bqjit's are those of vLLM's ``silu_and_mul_per_block_quant``
(fp32 throughout, a true division, the same MIN_SCALE), so the first swap
gives the same bits. vLLM's masked DeepGEMM op floors amax at 1e-10 before
dividing by 448, where bqjit floors the scale at 1 / (448 * 512): the two
differ only for groups whose amax is below 1/512, where both scales are far
below any value that matters. ``num_parallel_tokens`` is a launch hint of
vLLM's kernel; bqjit's planner picks the launch shape, so it is accepted and
ignored.
"""

from typing import Optional, Tuple

from .ops import HAVE_TORCH, silu_mul_quant, silu_mul_quant_masked

__all__ = ["silu_and_mul_per_block_quant", "silu_mul_fp8_quant_deep_gemm_cuda"]

if HAVE_TORCH:
    import torch

    def silu_and_mul_per_block_quant(
        out: torch.Tensor,
        input: torch.Tensor,
        scales: torch.Tensor,
        group_size: int,
        scale_ub: Optional[torch.Tensor] = None,
        is_scale_transposed: bool = False,
    ) -> None:
        """vLLM's ``silu_and_mul_per_block_quant``: writes ``out`` [T, H]
        (float8_e4m3fn, float8_e5m2 or int8: its dtype is the output type) and
        ``scales``: float32 [T, H / group_size], or with
        ``is_scale_transposed`` the transposed scales, given either as
        [H / group_size, T] contiguous or as its [T, H / group_size] view with
        strides (1, T) (bqjit's "col" layout)."""
        layout = "col" if is_scale_transposed else "row"
        if is_scale_transposed and scales.dim() == 2 and input.dim() == 2:
            t, ng = input.shape[0], input.shape[-1] // 2 // group_size if group_size else 0
            if tuple(scales.shape) == (ng, t) and (t, ng) != (ng, t):
                scales = scales.t()
        silu_mul_quant(input, group_size, out.dtype, layout, False, scale_ub, out=out, scales_out=scales)

    def silu_mul_fp8_quant_deep_gemm_cuda(
        y: torch.Tensor,
        tokens_per_expert: torch.Tensor,
        num_parallel_tokens: int = 16,
        group_size: int = 128,
        use_ue8m0: bool = False,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """vLLM's masked MoE op for DeepGEMM: ``y`` [E, T, 2H], ``tokens_per_expert``
        [E] live rows per expert; returns ``y_q`` [E, T, H] float8_e4m3fn and
        ``y_s`` float32 [E, T, H / group_size] with strides (T * NG, 1, T).
        Rows past ``tokens_per_expert[e]`` are left unwritten."""
        del num_parallel_tokens  # bqjit's planner chooses the launch shape
        if tokens_per_expert.dtype != torch.int32:
            tokens_per_expert = tokens_per_expert.to(torch.int32)
        return silu_mul_quant_masked(y, tokens_per_expert, group_size, torch.float8_e4m3fn, "col", use_ue8m0)

else:
    from .ops import _not_available as silu_and_mul_per_block_quant  # noqa: F401
    from .ops import _not_available as silu_mul_fp8_quant_deep_gemm_cuda  # noqa: F401
