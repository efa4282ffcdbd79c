"""Training-only CUDA kernels (Triton), each computing the same function as a PyTorch reference in pgolf.model.

mlp_triton  fused up-projection + LeakyReLU(slope)^2 of the MLP, forward and backward (own kernel: no kept
            library has LeakyReLU^2); reference: pgolf.model.mlp.MLP's eager forward
ce_liger    soft-capped cross-entropy from hidden states through liger-kernel's fused linear CE; reference:
            pgolf.model.loss.softcapped_cross_entropy and F.cross_entropy(c * tanh(z / c))

They import triton (and liger_kernel) at import time, so they are imported only when train.fused_mlp /
train.fused_ce ask for them (pgolf.training.kernels). Both are torch.library custom ops with fake (meta)
implementations, so a fullgraph torch.compile treats them as one opaque node each.
"""
