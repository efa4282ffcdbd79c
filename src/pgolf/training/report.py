"""What a package run adds to its folder beyond the essentials: loss.png and the end-of-run summary.

A generated train_gpt.py carries neither (pgolf.config.optional lists this module as package-only): its run
folder holds config.toml, env.json, log.jsonl, result.json, model.safetensors and artifact.pgolf, and it prints
the challenge's `final val_loss:... val_bpb:...` line instead of the summary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .runs import format_duration, read_log


def plot_losses(run_dir: Path) -> Path | None:
    """loss.png: train loss per logged step and validation points, from log.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(run_dir / "log.jsonl")
    train = [(r["step"], r["train_loss"]) for r in records if r.get("train_loss") is not None]
    val = [(r["step"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
    if not train and not val:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train), lw=1.2, label="train loss")
    if val:
        ax.plot(*zip(*val), "o-", ms=4, label="val loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats)")
    ax.set_title(run_dir.name, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = run_dir / "loss.png"
    fig.savefig(out)
    plt.close(fig)
    return out


def summary(result: dict[str, Any], run_dir: Path) -> str:
    """The one-screen summary printed at the end of a run."""
    limit = result.get("limit_bytes", 16_000_000)
    margin = limit - result["artifact_bytes"]
    status = "UNDER the limit" if result["under_limit"] else "OVER THE LIMIT"
    lines = [
        "",
        f"  run        {run_dir}",
        f"  recipe     {result['recipe']} (scale {result.get('scale')}, seed {result['seed']}, {result['world_size']} x {result['device']})",
        f"  trained    {result['steps']} steps, {result['train_tokens']:,} tokens in {format_duration(result['train_seconds'])} "
        f"({result['tokens_per_second']:,.0f} tokens/s)",
        f"  val_bpb    {result['val_bpb']:.4f}  (val_loss {result['val_loss']:.4f} nats; eval {result.get('eval_mode', 'plain')}"
        f"{'' if result.get('legal', True) else ', NOT LEGAL'}; scored on the artifact)",
    ]
    if result.get("averaging_detail"):
        lines.append(f"  weights    {result['averaging_detail']}")
    if result.get("val_bpb_prequant") is not None:
        gap = result.get("val_bpb_plain", result["val_bpb"]) - result["val_bpb_prequant"]
        lines.append(f"  prequant   {result['val_bpb_prequant']:.4f}  (quantization cost {gap:+.4f} bpb, "
                     f"weights: {result.get('averaging', 'live')})")
    lines += [
        f"  artifact   {result['artifact_bytes']:,} bytes = {result['model_bytes']:,} model + {result['code_bytes']:,} code "
        f"-> {status} ({margin:+,} bytes of {limit:,})",
    ]
    if result.get("calibration_seconds"):
        sampled = (f" (sampling {result['calibration_generated_tokens']:,} tokens "
                   f"in {result['calibration_generate_seconds']:.1f} s)"
                   if "calibration_generate_seconds" in result else "")
        over = ", OVER quant.gptq_reserve_s" if result.get("calibration_over_reserve") else ""
        lines.append(f"  gptq calib {result['calibration_seconds']:.1f} s{sampled} on the training clock "
                     f"(reserve {result.get('calibration_reserve_s', 0):g} s{over}; within the cap: "
                     f"{result.get('within_cap', True)})")
    fit = result.get("fit")
    if fit and fit.get("needed"):
        cost = f"; {fit['val_bpb_cost']:+.5f} bpb after the round trip" if "val_bpb_cost" in fit else ""
        lines.append(f"  quant.fit  {fit['message']}{cost}")
    lines += [
        "  files      config.toml, log.jsonl, result.json, artifact.pgolf, loss.png",
        "",
    ]
    return "\n".join(lines)
