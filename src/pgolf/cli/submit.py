"""`pgolf submit`: the challenge's submission folder from one run (or several seeds of one config).

The folder holds README.md (written from the config and the results), submission.json (the challenge's
fields), the training logs (log.jsonl and a readable train.log per seed), requirements.txt, one
self-contained train_gpt.py (pgolf.artifact.bundle) whose size is the counted code bytes, its line map
(train_gpt.linemap.json: tracebacks back to the repository; not code, not counted) and, when the run used a
tokenizer the challenge does not publish, that tokenizer under tokenizers/.

Nothing is taken on trust from result.json: each run's artifact.pgolf must be the file the run scored (size,
sha256, and its embedded config equal to config.toml's: a re-pack in place is caught), the script pgolf would
write now must have the size each run counted (else pgolf's sources changed since: refused unless --force),
the seeds must be integers and the tokenizer file must still be the one the run used.
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
from ..artifact.bundle import bundle_bytes, code_bytes, config_delta, linemap, requirements
from ..artifact.linemap import write_linemap
from ..artifact.sizes import LIMIT_BYTES
from ..config import config_to_dict, load_config
from ..data.dataset import challenge_paths
from ..data.byte_tokenizer import BYTE260, BYTE260_FILENAME
from ..data.tokenizer import file_sha256, tokenizer_exists, tokenizer_sha256
from ..quant.pack import unpack
from .recipes_info import switches
from .report import Run, RunFolderError, comparability_problems, load_run

TIME_LIMIT_S = 600.0
LINEMAP_NAME = "train_gpt.linemap.json"
# Tokenizers the challenge publishes with its data (sha256 -> file name); any other one ships in the folder.
# sp1024 and byte260 are listed; the sp4096 / sp8192 copies at hand are not proven to be the published ones
# (shared/data/README.md §2), so a run on them ships its tokenizer file too, which is never wrong.
CHALLENGE_TOKENIZERS = {"4f5e8adb109c66b4886963bc75a7befd73bda36d27fd7102df8e9e66503b0e2a": "fineweb_1024_bpe.model",
                        tokenizer_sha256(BYTE260): BYTE260_FILENAME}


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
        _check_seed(run)
        runs.append(run)
    return runs


def _check_seed(run: Run) -> None:
    """The seed goes into file names: an integer, the one config.toml says."""
    seed = run.result.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise SubmissionError(f"{run.path / 'result.json'}: 'seed' must be an integer, got {seed!r}")
    if run.config is not None and run.config.get("seed") != seed:
        raise SubmissionError(f"{run.path}: result.json says seed {seed}, config.toml says {run.config.get('seed')!r}")


def check_artifact(run: Run) -> None:
    """artifact.pgolf must be the file the run scored: its size, its sha256, and its embedded config."""
    path = run.path / "artifact.pgolf"
    result_file = run.path / "result.json"
    if not path.is_file():
        raise SubmissionError(f"{path}: missing; the submission's figures were measured on it")
    size = path.stat().st_size
    stale = "was re-packed or replaced after the run, so result.json's figures (val_bpb, bytes) are not its own"
    if size != run.result.get("model_bytes"):
        raise SubmissionError(f"{path} is {size:,} bytes but {result_file} says model_bytes = "
                              f"{run.result.get('model_bytes')!r}: the artifact {stale}; score it again or re-run")
    recorded = run.result.get("artifact_sha256")
    if recorded is not None and file_sha256(path) != recorded:
        raise SubmissionError(f"{path}: sha256 differs from the one in {result_file}: the artifact {stale}")
    try:
        _, embedded_cfg = unpack(path)
    except ValueError as exc:  # ArtifactError and the config's own errors
        raise SubmissionError(f"{path}: cannot be read back ({exc})") from exc
    embedded = _flat(config_to_dict(embedded_cfg))
    config = _flat(config_to_dict(load_config(run.path / "config.toml")))
    differs = sorted(k for k in embedded.keys() | config.keys() if embedded.get(k) != config.get(k))
    if differs:
        raise SubmissionError(f"{path}: its embedded config differs from {run.path / 'config.toml'} in "
                              f"{', '.join(differs[:8])}: the artifact {stale}")


def code_changes(runs: list[Run]) -> list[str]:
    """Runs whose counted code_bytes differ from the train_gpt.py pgolf would write for their config now."""
    problems = []
    for run in runs:
        now = code_bytes(load_config(run.path / "config.toml"))
        counted = run.result.get("code_bytes")
        if counted != now:
            problems.append(f"{run.path}: the run counted {counted!r} code bytes, its train_gpt.py would now be {now:,}")
    return problems


def custom_tokenizer(run: Run) -> Path | None:
    """The run's tokenizer file when the challenge does not publish it (it must ship in the folder), else None."""
    env = run.env or {}
    path = Path(env.get("tokenizer") or load_config(run.path / "config.toml").data.tokenizer)
    recorded = env.get("tokenizer_sha256")
    if recorded in CHALLENGE_TOKENIZERS or (recorded is None and tokenizer_exists(path)
                                            and tokenizer_sha256(path) in CHALLENGE_TOKENIZERS):
        return None
    if not path.is_file():
        raise SubmissionError(f"{path}: the run's tokenizer is not one the challenge publishes, so it must ship in "
                              f"the folder, but the file is gone")
    if recorded is not None and file_sha256(path) != recorded:
        raise SubmissionError(f"{path}: the tokenizer changed since the run (sha256 differs from {run.path / 'env.json'})")
    return path


def _flat(delta: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in delta.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def same_config(runs: list[Run]) -> None:
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
    files = ["`train_gpt.py`: the training and evaluation script (the pgolf modules this config uses, minified, "
             "and the config, in one file)",
             f"`{LINEMAP_NAME}`: where each line of the script's minified modules comes from in pgolf's repository "
             f"(`pgolf traceback {LINEMAP_NAME} < error.txt` annotates a traceback); not code, not counted",
             "`requirements.txt`: the packages it imports, at the versions used",
             "`submission.json`: leaderboard metadata"]
    tokenizer = record.get("tokenizer")
    if tokenizer:
        files.append(f"`{tokenizer}`: the tokenizer the run used ({record['bytes_tokenizer']:,} bytes), which the "
                     f"challenge does not publish (the data shards are tokenized with it: `pgolf data prepare`); like "
                     f"records with their own tokenizer, it ships beside the script and is not part of the counted "
                     f"artifact (code + compressed model)")
    files += [f"`{n}`" for n in log_names]
    tokenizer_arg = tokenizer or f"data/{challenge_paths(cfg.model.vocab_size)[1]}"
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
DATA=data/{challenge_paths(cfg.model.vocab_size)[0]}; TOK={tokenizer_arg}
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
    same_config(runs)
    for run in runs:
        check_artifact(run)
    warnings = []
    changed = code_changes(runs)
    if changed:
        message = ("pgolf's code changed since the run(s): " + "; ".join(changed) + ". The scores were measured with "
                   "other code than the script would carry")
        if not force:
            raise SubmissionError(message + ": re-run, or --force to submit the new script at its real size")
        warnings.append(message + "; submission.json uses the new script's size (--force)")
    cfg = load_config(runs[0].path / "config.toml")
    tokenizer = custom_tokenizer(runs[0])
    out = Path(out)
    _prepare_out(out, force)
    script = bundle_bytes(cfg)
    (out / "train_gpt.py").write_bytes(script)
    script_bytes = len(script)
    write_linemap(linemap(cfg), out / LINEMAP_NAME)
    tokenizer_bytes = 0
    if tokenizer is not None:
        (out / "tokenizers").mkdir(exist_ok=True)
        shutil.copyfile(tokenizer, out / "tokenizers" / tokenizer.name)
        tokenizer_bytes = tokenizer.stat().st_size
    lines, optional = requirements(cfg)
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
    record = submission_record(runs, script_bytes, name=name, author=author, github_id=github_id, blurb=blurb)
    if tokenizer is not None:
        record["tokenizer"] = f"tokenizers/{tokenizer.name}"
        record["bytes_tokenizer"] = tokenizer_bytes
    (out / "submission.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    delta_toml = tomli_w.dumps(config_delta(cfg))
    (out / "README.md").write_text(render_readme(runs, record, delta_toml, log_names), encoding="utf-8")
    if len(runs) < 3:
        warnings.append(f"{len(runs)} seed{'s' if len(runs) != 1 else ''}: records need 3 or more "
                        f"(pgolf submit RUN_A RUN_B RUN_C --out DIR)")
    if not all(record["compliance"].values()):
        failed = [k for k, v in record["compliance"].items() if not v]
        warnings.append(f"not a valid record as it stands: {', '.join(failed)}")
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    return {"out": str(out), "files": files, "record": record, "warnings": warnings}
