"""Validation of the eval.* settings of sliding windows and test-time training (errors name the key)."""

from __future__ import annotations

from ..config import ConfigError, EvalConfig

LORA_TARGETS = ("q", "k", "v", "o", "mlp", "head")


def check_eval_config(e: EvalConfig, context_len: int, num_layers: int | None = None) -> None:
    """Raise ConfigError for an eval setting that cannot run; `context_len` is the resolved eval context."""
    if e.sliding_stride < 0 or e.sliding_stride > context_len:
        raise ConfigError(f"'eval.sliding_stride' must be in 0..{context_len} (the eval context), got {e.sliding_stride}")
    if e.batch_seqs <= 0:
        raise ConfigError(f"'eval.batch_seqs' must be positive, got {e.batch_seqs}")
    if e.max_seconds < 0:
        raise ConfigError(f"'eval.max_seconds' must be >= 0 (0 = no cap), got {e.max_seconds}")
    if e.ttt in ("chunk", "pre"):
        for key in ("ttt_epochs", "ttt_batch_seqs") + (("ttt_chunk_tokens",) if e.ttt == "chunk" else ()):
            if getattr(e, key) <= 0:
                raise ConfigError(f"'eval.{key}' must be positive with eval.ttt = '{e.ttt}', got {getattr(e, key)}")
        if e.ttt_lr <= 0 or e.ttt_grad_clip < 0 or not 0 <= e.ttt_momentum < 1:
            raise ConfigError(f"'eval.ttt_lr' must be > 0, 'eval.ttt_grad_clip' >= 0 and 'eval.ttt_momentum' in [0, 1); "
                              f"got {e.ttt_lr}, {e.ttt_grad_clip}, {e.ttt_momentum}")
        if e.ttt_freeze_blocks < 0 or (num_layers is not None and e.ttt_freeze_blocks > num_layers):
            raise ConfigError(f"'eval.ttt_freeze_blocks' must be in 0..{num_layers}, got {e.ttt_freeze_blocks}")
    if e.ttt == "lora":
        unknown = [t for t in e.ttt_lora_targets if t not in LORA_TARGETS]
        if unknown:
            raise ConfigError(f"'eval.ttt_lora_targets' names {unknown[0]!r}; choose from {list(LORA_TARGETS)}")
        if e.ttt_lora_rank <= 0:
            raise ConfigError(f"'eval.ttt_lora_rank' must be positive, got {e.ttt_lora_rank}")
        if not 0 < e.ttt_lora_chunk <= context_len:
            raise ConfigError(f"'eval.ttt_lora_chunk' must be in 1..{context_len} (the eval context), got {e.ttt_lora_chunk}")
        if e.ttt_batch_docs <= 0:
            raise ConfigError(f"'eval.ttt_batch_docs' must be positive, got {e.ttt_batch_docs}")
        if e.ttt_lora_lr <= 0 or e.ttt_lora_eps <= 0 or e.ttt_lora_wd < 0:
            raise ConfigError("'eval.ttt_lora_lr' and 'eval.ttt_lora_eps' must be > 0 and 'eval.ttt_lora_wd' >= 0")
        if not (0 <= e.ttt_lora_beta1 < 1 and 0 <= e.ttt_lora_beta2 < 1):
            raise ConfigError(f"'eval.ttt_lora_beta1' and 'eval.ttt_lora_beta2' must be in [0, 1), "
                              f"got {e.ttt_lora_beta1}, {e.ttt_lora_beta2}")
