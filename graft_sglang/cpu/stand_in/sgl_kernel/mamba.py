"""What SGLang's linear-attention backends (GDN, KDA; e.g. Qwen3-Next) look up on CPU when their
modules are imported: the ``sgl_kernel.mamba`` names and two ``torch.ops.sgl_kernel`` ops. The
stand-in serves no such model: each resolves, and raises NotImplementedError naming itself when
called, so such a model fails at its first forward with that message."""

from __future__ import annotations

from ._registry import not_implemented, register

causal_conv1d_fn_cpu = not_implemented("sgl_kernel.mamba.causal_conv1d_fn_cpu")
causal_conv1d_update_cpu = not_implemented("sgl_kernel.mamba.causal_conv1d_update_cpu")
chunk_gated_delta_rule_cpu = not_implemented("sgl_kernel.mamba.chunk_gated_delta_rule_cpu")

register(
    "fused_gdn_gating_cpu(Tensor A_log, Tensor a, Tensor b, Tensor dt_bias) -> (Tensor, Tensor)",
    not_implemented("torch.ops.sgl_kernel.fused_gdn_gating_cpu"),
)
register(
    "fused_sigmoid_gating_delta_rule_update_cpu(Tensor A_log, Tensor dt_bias, Tensor q, "
    "Tensor k, Tensor v, Tensor a, Tensor b, Tensor(a!) initial_state_source, "
    "Tensor initial_state_indices, Tensor cu_seqlens, bool use_qk_l2norm_in_kernel, "
    "float softplus_beta=1.0, float softplus_threshold=20.0) -> Tensor",
    not_implemented("torch.ops.sgl_kernel.fused_sigmoid_gating_delta_rule_update_cpu"),
)
