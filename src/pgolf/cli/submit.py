"""`pgolf submit`: the challenge's submission folder from one run (or several seeds of one config).

The folder holds README.md (written from the config and the results), submission.json (the challenge's
fields), the training logs (log.jsonl and a readable train.log per seed), requirements.txt and one
self-contained train_gpt.py (pgolf.artifact.bundle) whose size is the counted code bytes.
"""

from __future__ import annotations

import datetime
import json
import shutil
import statistics
from pathlib import Path
from typing import Any, Sequence

import tomli_w

from .._version import __version__
from ..artifact.bundle import config_delta, requirements, write_bundle
from ..artifact.sizes import LIMIT_BYTES
from ..config import load_config
from ..data.dataset import challenge_paths
from .recipes_info import switches
from .report import Run, RunFolderError, comparability_problems, load_run

TIME_LIMIT_S = 600.0


class SubmissionError(ValueError):
    """The runs cannot make one submission (unfinished, different configs, output folder in the way)."""


# ----------------------------------------------------------------------------- logs

def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}" if abs(value) < 1e-3 or abs(value) >= 1e6 else f"{value:.4f}"
    return str(value)


def render_train_log(run: Run) -> str:
    """A human-readable train.log from log.jsonl and result.json (one line per logged record)."""
    r = run.result
    total = (run.config or {}).get("train", {}).get("steps", "?")
    lines = [f"pgolf {__version__} | recipe {r.get('recipe')} (scale {r.get('scale')}) | seed {r.get('seed')} | "
             f"{r.get('world_size')} x {r.get('device')} | torch {r.get('torch_version')}"]
    if run.env:
        lines.append(f"data {run.env.get('data_folder')} | tokenizer {run.env.get('tokenizer')} "
                     f"(sha256 {str(run.env.get('tokenizer_sha256'))[:16]}) | started {run.env.get('started')}")
    for rec in run.log():
        step = rec.get("step")
        if "train_loss" in rec:
            lines.append(f"step:{step}/{total} train_loss:{rec['train_loss']:.4f} lr_mult:{rec.get('lr_mult', 0):.4f} "
                         f"tokens/s:{rec.get('tokens_per_s', 0):,.0f} step_avg:{rec.get('ms_per_step', 0):.2f}ms "
                         f"elapsed:{rec.get('elapsed_s', 0):.1f}s")
        elif "val_loss" in rec:
            lines.append(f"step:{step}/{total} val_loss:{rec['val_loss']:.4f} val_bpb:{rec.get('val_bpb', 0):.4f}")
        else:
            lines.append(f"step:{step}/{total} " + " ".join(f"{k}:{_fmt(v)}" for k, v in rec.items() if k != "step"))
    lines += [
        f"stopped at step {r.get('steps')}/{total} after {r.get('train_seconds', 0):.1f} s of training "
        f"({r.get('train_tokens', 0):,} tokens, {r.get('tokens_per_second', 0):,.0f} tokens/s)",
        f"prequant val_loss:{r.get('val_loss_prequant', float('nan')):.8f} val_bpb:{r.get('val_bpb_prequant', float('nan')):.8f}",
        f"roundtrip plain val_bpb:{r.get('val_bpb_plain', float('nan')):.8f}",
        f"final {r.get('eval_mode')} val_loss:{r['val_loss']:.8f} val_bpb:{r['val_bpb']:.8f} "
        f"targets:{r.get('val_targets')} bytes:{r.get('val_bytes')} eval_seconds:{r.get('eval_seconds', 0):.1f} "
        f"legal:{str(r.get('legal')).lower()}",
        f"artifact_bytes:{r.get('artifact_bytes')} = model_bytes:{r.get('model_bytes')} ({r.get('compressor')}) + "
        f"code_bytes:{r.get('code_bytes')} | under_limit:{str(r.get('under_limit')).lower()}",
    ]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- checks

def _load(run_dirs: Sequence[str | Path]) -> list[Run]:
    if not run_dirs:
        raise SubmissionError("give at least one run folder")
    runs = []
    for path in run_dirs:
        run = load_run(path)
        if run.config is None:
            raise RunFolderError(f"{path}: no config.toml; cannot rebuild the training script")
        runs.append(run)
    return runs


def _flat(delta: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in delta.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def _same_config(runs: list[Run]) -> None:
    """The runs must be seeds of one config, scored on the same validation data the same way."""
    ignored = {"seed", "data.path", "data.tokenizer"}  # paths may differ between machines; checksums are checked

    def settings(run: Run) -> dict[str, Any]:
        flat = _flat(config_delta(load_config(run.path / "config.toml")))
        return {k: v for k, v in flat.items() if k not in ignored}

    first = settings(runs[0])
    for run in runs[1:]:
        other = settings(run)
        keys = sorted(k for k in set(first) | set(other) if first.get(k) != other.get(k))
        if keys:
            raise SubmissionError(f"{run.path} and {runs[0].path} differ in more than the seed ({', '.join(keys)}); "
                                  f"one submission is one config")
    seeds = [run.result.get("seed") for run in runs]
    if len(set(seeds)) != len(seeds):
        raise SubmissionError(f"seeds repeat among the runs ({seeds}); each seed once")
    problems = comparability_problems(runs) if len(runs) > 1 else []
    if problems:
        raise SubmissionError("the runs were not scored alike: " + "; ".join(problems))


def _prepare_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise SubmissionError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise SubmissionError(f"{out}: folder exists and is not empty (pick another --out, or --force to overwrite)")
    out.mkdir(parents=True, exist_ok=True)


# ----------------------------------------------------------------------------- submission.json and README

def _hardware(run: Run) -> str:
    return f"{run.result.get('world_size', 1)}x {run.result.get('device')}"


def submission_record(runs: list[Run], code_bytes: int, *, name: str | None, author: str | None,
                      github_id: str | None, blurb: str | None) -> dict[str, Any]:
    """The challenge's submission.json fields (name/author placeholders unless given)."""
    first = runs[0].result
    per_seed = {}
    for run in runs:
        r = run.result
        per_seed[str(r.get("seed"))] = {
            "val_loss": r["val_loss"], "val_bpb": r["val_bpb"], "artifact_bytes": r["model_bytes"] + code_bytes,
            "model_bytes": r["model_bytes"], "steps": r.get("steps"), "train_seconds": r.get("train_seconds"),
            "eval_seconds": r.get("eval_seconds")}
    losses = [run.result["val_loss"] for run in runs]
    bpbs = [run.result["val_bpb"] for run in runs]
    totals = [s["artifact_bytes"] for s in per_seed.values()]
    cuda = all("cpu" not in str(run.result.get("device", "")).lower() for run in runs)
    compliance = {
        "train_under_600s": all((run.result.get("train_seconds") or 0) <= TIME_LIMIT_S for run in runs),
        "artifact_under_16mb": all(t <= LIMIT_BYTES for t in totals),
        "eval_under_600s": all((run.result.get("eval_seconds") or 0) <= TIME_LIMIT_S for run in runs),
        "legal_evaluation": all(run.result.get("legal") is not False for run in runs),
        "full_validation_split": not any(run.result.get("val_tokens_limited") for run in runs),
        "three_seeds": len(runs) >= 3,
    }
    record_track = cuda and all(run.result.get("world_size") == 8 for run in runs) and all(compliance.values())
    record: dict[str, Any] = {
        "author": author or "YOUR NAME",
        "github_id": github_id or "your-github-id",
        "name": name or f"pgolf {Path(str(first.get('recipe'))).stem}",
        "blurb": blurb or f"pgolf recipe {first.get('recipe')} (scale {first.get('scale')}); DESCRIBE WHAT IS NEW.",
        "date": datetime.date.today().isoformat(),
        "track": "10min_16mb" if record_track else "non_record_16mb",
        "val_loss": statistics.fmean(losses),
        "val_bpb": statistics.fmean(bpbs),
    }
    if len(runs) > 1:
        record["val_bpb_std"] = statistics.stdev(bpbs)
        record["val_loss_std"] = statistics.stdev(losses)
    record.update({
        "seeds": [run.result.get("seed") for run in runs],
        "seed_results": per_seed,
        "bytes_total": max(totals),
        "bytes_code": code_bytes,
        "bytes_model": max(run.result["model_bytes"] for run in runs),
        "compliance": compliance,
        "eval_mode": first.get("eval_mode"),
        "hardware": _hardware(runs[0]),
        "pytorch_version": first.get("torch_version"),
        "pgolf_version": __version__,
        "recipe": first.get("recipe"),
    })
    return record


def render_readme(runs: list[Run], record: dict[str, Any], delta_toml: str, log_names: list[str]) -> str:
    cfg = load_config(runs[0].path / "config.toml")
    first = runs[0].result
    rows = ["| seed | val_loss (nats) | val_bpb | artifact bytes | steps | train s | eval s |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for seed, s in record["seed_results"].items():
        rows.append(f"| {seed} | {s['val_loss']:.5f} | {s['val_bpb']:.5f} | {s['artifact_bytes']:,} | {s['steps']} | "
                    f"{(s['train_seconds'] or 0):.1f} | {(s['eval_seconds'] or 0):.1f} |")
    if len(runs) > 1:
        rows.append(f"| **mean** | {record['val_loss']:.5f} ± {record['val_loss_std']:.5f} | "
                    f"{record['val_bpb']:.5f} ± {record['val_bpb_std']:.5f} | {record['bytes_total']:,} (max) | | | |")
    compliance = "\n".join(f"- `{k}`: {'yes' if v else '**no**'}" for k, v in record["compliance"].items())
    nproc = first.get("world_size") or 1
    launch = (f"torchrun --standalone --nproc_per_node={nproc} train_gpt.py" if nproc > 1 else "python train_gpt.py")
    seed_cmds = "\n".join(f"SEED={run.result.get('seed')} DATA_PATH=$DATA TOKENIZER_PATH=$TOK {launch}" for run in runs)
    files = ["`train_gpt.py`: the training and evaluation script (pgolf's runtime code and this config in one file)",
             "`requirements.txt`: the packages it imports, at the versions used",
             "`submission.json`: leaderboard metadata"]
    files += [f"`{n}`" for n in log_names]
    text = f"""# {record['name']}

{record['blurb']}

Generated by pgolf {__version__} (`pgolf submit`) from the `{first.get('recipe')}` recipe
(scale {first.get('scale')}): {cfg.description or 'no description'}.

## Results

Scored on the model decompressed from the artifact, evaluation mode `{first.get('eval_mode')}`,
{first.get('val_targets') or 0:,} validation targets ({first.get('val_bytes') or 0:,} bytes){' — a LIMITED part of the validation split' if first.get('val_tokens_limited') else ''};
hardware {record['hardware']}, torch {record['pytorch_version']}.

{chr(10).join(rows)}

Artifact = `train_gpt.py` ({record['bytes_code']:,} bytes, the exact file in this folder) + compressed model
({record['bytes_model']:,} bytes at most, {first.get('compressor')}) = **{record['bytes_total']:,} bytes** of the
16,000,000 allowed.

Compliance:
{compliance}

## Configuration

Techniques switched on: {', '.join(f'`{s}`' for s in switches(cfg)) or 'the baseline only'}.

Every setting that differs from pgolf's defaults (the same text is embedded in `train_gpt.py`):

```toml
{delta_toml.rstrip()}
```

## Reproduce

```bash
pip install -r requirements.txt          # on a GPU machine: a CUDA build of torch
DATA=data/{challenge_paths(cfg.model.vocab_size)[0]}; TOK=data/{challenge_paths(cfg.model.vocab_size)[1]}
{seed_cmds}
```

`DATA_PATH` / `TOKENIZER_PATH` default to the paths of the original run; `SEED` to {first.get('seed')};
`RUN_DIR` names the output folder (default `runs/<recipe>-<time>-s<seed>`). The script trains under the config's
wall-clock cap, packs the artifact, scores it and prints
`final val_loss:... val_bpb:... artifact_bytes:... code_bytes:...`.

## Included files

{chr(10).join('- ' + f for f in files)}
"""
    return text


# ----------------------------------------------------------------------------- the folder

def make_submission(run_dirs: Sequence[str | Path], out: str | Path, *, name: str | None = None,
                    author: str | None = None, github_id: str | None = None, blurb: str | None = None,
                    force: bool = False) -> dict[str, Any]:
    """Write the submission folder; returns {'out', 'files', 'record', 'warnings'}."""
    runs = _load(run_dirs)
    _same_config(runs)
    out = Path(out)
    _prepare_out(out, force)
    cfg = load_config(runs[0].path / "config.toml")
    code_bytes = write_bundle(cfg, out / "train_gpt.py")
    warnings = []
    counted = runs[0].result.get("code_bytes")
    if counted != code_bytes:
        warnings.append(f"{runs[0].path / 'result.json'} counted {counted} code bytes but train_gpt.py is "
                        f"{code_bytes} bytes: pgolf's sources changed since the run; submission.json uses the file's size")
    lines, optional = requirements()
    req = "".join(line + "\n" for line in lines)
    if optional:
        req += "".join(f"# optional fast path, used when installed: {m}\n" for m in optional)
    (out / "requirements.txt").write_text(req, encoding="utf-8")
    log_names = []
    single = len(runs) == 1
    for run in runs:
        seed = run.result.get("seed")
        stem = "" if single else f"_seed{seed}"
        if (run.path / "log.jsonl").is_file():
            shutil.copyfile(run.path / "log.jsonl", out / f"log{stem}.jsonl")
            log_names.append(f"log{stem}.jsonl")
        (out / f"train{stem}.log").write_text(render_train_log(run), encoding="utf-8")
        log_names.append(f"train{stem}.log")
        if (run.path / "loss.png").is_file():
            shutil.copyfile(run.path / "loss.png", out / f"loss{stem}.png")
            log_names.append(f"loss{stem}.png")
    record = submission_record(runs, code_bytes, name=name, author=author, github_id=github_id, blurb=blurb)
    (out / "submission.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    delta_toml = tomli_w.dumps(config_delta(cfg))
    (out / "README.md").write_text(render_readme(runs, record, delta_toml, log_names), encoding="utf-8")
    if len(runs) < 3:
        warnings.append(f"{len(runs)} seed{'s' if len(runs) != 1 else ''}: records need 3 or more "
                        f"(pgolf submit RUN_A RUN_B RUN_C --out DIR)")
    if not all(record["compliance"].values()):
        failed = [k for k, v in record["compliance"].items() if not v]
        warnings.append(f"not a valid record as it stands: {', '.join(failed)}")
    files = sorted(p.name for p in out.iterdir())
    return {"out": str(out), "files": files, "record": record, "warnings": warnings}
