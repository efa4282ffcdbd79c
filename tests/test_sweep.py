"""`pgolf sweep`: spec validation, greedy search, resume, retries, several workers on one study (SQLite and a
real PostgreSQL server), device slots and pruning — with tests/fake_train.py standing in for `pgolf train`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import tomli_w
from optuna.trial import TrialState

import pgolf
from pgolf.cli import main
from pgolf.sweep import SlotError, device_slots, load_spec, run_sweep
from pgolf.sweep.study import default_storage_url, role

from conftest import need

REPO = Path(__file__).resolve().parent.parent
FAKE_CMD = [sys.executable, str(Path(__file__).parent / "fake_train.py")]
SPACE = {
    "model.smear": {"choices": ["none", "pre_norm", "post_norm"]},
    "mlp": {"options": {"relu2": {}, "swiglu": {"model.mlp": "swiglu", "model.mlp_hidden": 341}}},
    "optim.matrix_lr": {"low": 0.01, "high": 0.08, "log": True, "points": 4},
    "model.qk_gain_init": {"choices": [1.5, 5.0]},
}


def write_spec(folder: Path, space=None, fixed=None, pruning=None, **sweep) -> Path:
    settings = {"recipe": "baseline", "scale": "tiny", "seeds": [1337, 42], "strategy": "random", "trials": 4,
                "heartbeat_s": 1, "grace_s": 3, **sweep}
    table = {"sweep": {k: v for k, v in settings.items() if v is not None},
             "fixed": fixed if fixed is not None else {"train.steps": 100},
             "space": space if space is not None else SPACE}
    if pruning:
        table["pruning"] = pruning
    path = folder / "spec.toml"
    path.write_text(tomli_w.dumps(table))
    return path


@pytest.fixture
def fake_env(tmp_path, monkeypatch):
    """FAKE_TRAIN_LOG records every start of the stand-in trainer; returns a reader of those records."""
    log = tmp_path / "fake_starts.jsonl"
    monkeypatch.setenv("FAKE_TRAIN_LOG", str(log))
    for knob in ("FAKE_TRAIN_GATE", "FAKE_TRAIN_CRASH", "FAKE_TRAIN_SLEEP", "FAKE_TRAIN_VAL_SLEEP"):
        monkeypatch.delenv(knob, raising=False)
    return lambda: [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []


def sweep_here(spec_path: Path, out: Path, **kw):
    kw.setdefault("train_command", FAKE_CMD)
    kw.setdefault("poll_s", 0.2)
    return run_sweep(load_spec(spec_path), out, say=lambda _: None, **kw)


def study_of(spec_path: Path, out: Path, storage: str | None = None) -> optuna.Study:
    spec = load_spec(spec_path)
    return optuna.load_study(study_name=spec.name, storage=storage or default_storage_url(out))


def finished(study: optuna.Study) -> list:
    return [t for t in study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)) if role(t) != "base"]


def subprocess_env(**extra) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1", **extra}
    return env


def sweep_process(spec_path: Path, out: Path, *extra: str, env=None) -> subprocess.Popen:
    args = [sys.executable, "-m", "pgolf", "sweep", str(spec_path), "--out", str(out), "--train-command",
            " ".join(FAKE_CMD), "--quiet", *extra]
    return subprocess.Popen(args, env=env or subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(condition, timeout: float = 90.0, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# ----------------------------------------------------------------------------- spec validation

@pytest.mark.parametrize("space, expected", [
    ({"model.num_layer": {"choices": [2, 4]}}, "unknown config key 'model.num_layer'; did you mean 'model.num_layers'?"),
    ({"optim.matrix_lr": {"low": 0.05, "high": 0.01}}, "'optim.matrix_lr': empty range: low = 0.05 is not below high = 0.01"),
    ({"model.num_layers": {"choices": [2, "four"]}}, "'model.num_layers' must be an integer, got 'four'"),
    ({"model.num_layers": {"low": 2.5, "high": 6}}, "'model.num_layers' must be an integer, got 2.5"),
    ({"model.mlp": {"choices": ["relu2", "gelu"]}}, "'model.mlp' must be one of relu2, leaky_relu2, swiglu; got 'gelu'"),
])
def test_a_bad_spec_is_refused_before_any_trial_naming_the_key(tmp_path, fake_env, capsys, space, expected):
    spec = write_spec(tmp_path, space=space)
    out = tmp_path / "out"
    code = main(["sweep", str(spec), "--out", str(out), "--train-command", " ".join(FAKE_CMD)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and expected in err[0] and str(spec) in err[0], err
    assert fake_env() == [] and not (out / "study.db").exists()


def test_every_problem_of_a_spec_gets_its_own_line(tmp_path, fake_env, capsys):
    spec = write_spec(tmp_path, space={"model.num_layer": {"choices": [2]}, "optim.matrix_lr": {"low": 1.0, "high": 1.0},
                                       "model.mlp": {"choices": ["gelu"]}}, fixed={"train.step": 10}, strategy="anneal")
    assert main(["sweep", str(spec), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    for needle in ("'strategy' must be one of grid, random, tpe, greedy", "did you mean 'train.steps'?",
                   "did you mean 'model.num_layers'?", "empty range: low = 1.0 is not below high = 1.0",
                   "'model.mlp' must be one of"):
        assert sum(needle in line for line in err) == 1, (needle, err)
    assert len(err) == 5


# ----------------------------------------------------------------------------- greedy

def test_greedy_finds_the_planted_optimum_and_writes_a_recipe_that_reproduces_it(tmp_path, fake_env):
    spec = write_spec(tmp_path, strategy="greedy", seeds=[1337, 42, 7], trials=30)
    summary = sweep_here(spec, tmp_path / "out")
    # the planted optimum: post_norm SmearGate, SwiGLU, matrix_lr 0.02; the qk_gain decoy (-0.002 nats) is below
    # the 0.005-nat margin and must not be kept
    assert summary["best"]["changes"] == {"model.smear": "post_norm", "model.mlp": "swiglu", "model.mlp_hidden": 341,
                                          "optim.matrix_lr": 0.02}
    kept = {s["param"]: s["kept"] for s in summary["greedy"]["steps"]}
    assert kept == {"model.smear": "post_norm", "mlp": "swiglu", "optim.matrix_lr": 0.02, "model.qk_gain_init": None}
    assert summary["compare"]["beats_by_margin_at_p_0.01"] is True
    cfg = pgolf.load_recipe(str(tmp_path / "out" / "best.toml"), scale="tiny")
    assert (cfg.model.smear, cfg.model.mlp, cfg.model.mlp_hidden, cfg.optim.matrix_lr, cfg.model.qk_gain_init,
            cfg.train.steps) == ("post_norm", "swiglu", 341, 0.02, 1.5, 100)
    assert pgolf.load_recipe(str(tmp_path / "out" / "best.toml"), scale="full").model.smear == "none"
    for name in ("sweep.md", "sweep.json", "sweep.png", "compare.txt", "compare.png"):
        assert (tmp_path / "out" / name).is_file(), name
    # every trial-seed is an ordinary run folder that `pgolf compare` reads
    best_runs = [tmp_path / "out" / r["run_dir"] for r in summary["trials"][summary["best"]["trial"]]["seeds"].values()]
    assert all((r / "result.json").is_file() for r in best_runs) and len(best_runs) == 3


def test_grid_runs_every_combination_once_and_an_artifact_over_the_limit_is_never_the_best(tmp_path, fake_env):
    space = {"model.smear": {"choices": ["none", "post_norm", "pre_norm"]}, "model.model_dim": {"choices": [256, 2048]}}
    spec = write_spec(tmp_path, space=space, strategy="grid", trials=None, fixed={"train.steps": 100,
                                                                                  "quant.allow_over_budget": True})
    summary = sweep_here(spec, tmp_path / "out")
    search = [r for r in summary["trials"] if r["role"] == "search"]
    assert sorted((r["params"]["model.smear"], r["params"]["model.model_dim"]) for r in search) == sorted(
        (s, d) for s in ("none", "post_norm", "pre_norm") for d in (256, 2048))
    over = [r for r in search if r["under_limit"] is False]
    assert len(over) == 3 and min(r["val_bpb"] for r in over) < summary["best"]["val_bpb"]
    assert summary["best"]["changes"] == {"model.smear": "post_norm", "model.model_dim": 256}


def test_tpe_draws_a_range_from_the_whole_interval_not_from_its_grid_points(tmp_path, fake_env):
    summary = sweep_here(write_spec(tmp_path, strategy="tpe", trials=3), tmp_path / "out")
    rates = [r["params"]["optim.matrix_lr"] for r in summary["trials"] if r["role"] == "search"]
    grid_points = load_spec(tmp_path / "spec.toml").space[2].candidates()
    assert len(rates) == 3 and all(0.01 <= x <= 0.08 for x in rates) and not set(rates) <= set(grid_points)
    assert summary["finished"] == 3


# ----------------------------------------------------------------------------- resume

def test_a_resumed_sweep_never_repeats_finished_trials(tmp_path, fake_env):
    spec = write_spec(tmp_path, trials=3)
    out = tmp_path / "out"
    sweep_here(spec, out)
    first = {t.number: (t.params, t.value) for t in study_of(spec, out).get_trials(states=(TrialState.COMPLETE,))}
    starts = len(fake_env())
    assert len(first) == 4 and starts == 4 * 2  # base + 3 trials, 2 seeds each
    sweep_here(spec, out)  # the budget is finished: nothing runs
    assert len(fake_env()) == starts
    write_spec(tmp_path, trials=5)  # a bigger budget continues the same study
    sweep_here(spec, out)
    study = study_of(spec, out)
    assert len(fake_env()) == starts + 2 * 2 and len(finished(study)) == 5
    again = {t.number: (t.params, t.value) for t in study.get_trials(states=(TrialState.COMPLETE,))}
    assert {n: again[n] for n in first} == first
    trained = [rec["out"] for rec in fake_env()]
    assert len(trained) == len(set(trained))  # no run folder trained twice


def test_a_changed_spec_is_refused_for_the_same_study(tmp_path, fake_env, capsys):
    spec = write_spec(tmp_path, trials=1)
    sweep_here(spec, tmp_path / "out")
    write_spec(tmp_path, trials=1, seeds=[1, 2])
    assert main(["sweep", str(spec), "--out", str(tmp_path / "out"), "--train-command", " ".join(FAKE_CMD)]) == 2
    assert "made from another spec" in capsys.readouterr().err


# ----------------------------------------------------------------------------- failures and retries

def test_a_crashed_training_process_fails_its_trial_which_is_retried_once(tmp_path, fake_env, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_CRASH", str(tmp_path / "crashed-once"))
    spec = write_spec(tmp_path, trials=1)
    sweep_here(spec, tmp_path / "out")
    trials = study_of(spec, tmp_path / "out").get_trials()
    assert trials[0].state == TrialState.FAIL and trials[0].user_attrs["failure_kind"] == "process"
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and role(retry[0]) == "base"


def test_a_trial_that_always_crashes_is_tried_twice_then_given_up(tmp_path, fake_env, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_CRASH", "always")
    spec = write_spec(tmp_path, trials=1, space={"model.smear": {"choices": ["post_norm"]}})
    sweep_here(spec, tmp_path / "out")
    trials = study_of(spec, tmp_path / "out").get_trials()
    base_attempts = [t for t in trials if role(t) == "base"]
    assert [t.state for t in base_attempts] == [TrialState.FAIL, TrialState.FAIL]
    assert all(t.state == TrialState.FAIL for t in trials) and len(trials) >= 10  # stopped by the failure cap


def _process_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return "gone"


def test_a_worker_killed_mid_trial_leaves_a_failed_trial_that_is_retried(tmp_path, fake_env, monkeypatch):
    need(sys.platform.startswith("linux"), "the parent-death signal is Linux's")
    gate = tmp_path / "gate"
    monkeypatch.setenv("FAKE_TRAIN_GATE", str(gate))
    spec = write_spec(tmp_path, trials=2)
    out = tmp_path / "out"
    proc = sweep_process(spec, out, env=subprocess_env())
    try:
        started = wait_for(lambda: fake_env(), what="the first trial to start")[0]
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    wait_for(lambda: _process_state(started["pid"]) in ("Z", "gone"), timeout=10,
             what="the killed worker's training process to die with it")
    study = study_of(spec, out)
    killed = [t for t in study.get_trials() if t.state == TrialState.RUNNING]
    assert len(killed) == 1
    gate.touch()
    sweep_here(spec, out)  # the resumed sweep marks the stale trial failed, runs it again, finishes the budget
    study = study_of(spec, out)
    trials = study.get_trials()
    assert trials[killed[0].number].state == TrialState.FAIL
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == killed[0].number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert retry[0].params == killed[0].params and role(retry[0]) == role(killed[0])
    assert len(finished(study)) == 2


# ----------------------------------------------------------------------------- several workers on one study

def _two_workers_share_the_study(tmp_path, fake_env, monkeypatch, storage: str | None):
    gate = tmp_path / "gate"
    monkeypatch.setenv("FAKE_TRAIN_GATE", str(gate))
    spec = write_spec(tmp_path, trials=6)
    out = tmp_path / "out"
    extra = ("--worker",) + (("--storage", storage) if storage else ())
    procs = [sweep_process(spec, out, *extra) for _ in range(2)]

    def both_started() -> bool:
        for p in procs:
            if p.poll() is not None:
                pytest.fail(f"worker {p.pid} exited early ({p.returncode}): {p.communicate()[0]}")
        return len({r["ppid"] for r in fake_env()}) == 2

    try:  # both workers are inside a trial at the same time before any trial may finish
        wait_for(both_started, what="both workers to start a trial")
        gate.touch()
        for p in procs:
            output, _ = p.communicate(timeout=180)
            assert p.returncode == 0, output
    finally:
        gate.touch()
        for p in procs:  # a failed wait must not leave the workers running (their runs die with them)
            if p.poll() is None:
                p.kill()
                p.wait()
    study = study_of(spec, out, storage)
    done = finished(study)
    assert len(done) == 6 and all(t.state == TrialState.COMPLETE for t in done)
    workers = {t.user_attrs["worker"].split(":")[1] for t in done}
    assert workers <= {str(p.pid) for p in procs} and len({t.user_attrs["worker"] for t in study.get_trials()
                                                           if t.state == TrialState.COMPLETE}) == 2
    trained = [r["out"] for r in fake_env()]
    assert len(trained) == len(set(trained)) == 7 * 2  # disjoint: no run trained by both workers; base + 6 trials
    by_worker = {}
    for r in fake_env():
        by_worker.setdefault(r["ppid"], set()).add(Path(r["out"]).name.split("-")[0])
    assert len(by_worker) == 2 and not set.intersection(*by_worker.values())


def test_two_worker_processes_on_one_sqlite_study_run_disjoint_trials_and_finish_the_budget(tmp_path, fake_env, monkeypatch):
    _two_workers_share_the_study(tmp_path, fake_env, monkeypatch, None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_url():
    """A throw-away PostgreSQL server (Debian's `postgresql` package) on a free loopback port."""
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    need(bool(bins) and not (shutil.which("runuser") is None and os.geteuid() == 0),
         "needs PostgreSQL's server binaries (/usr/lib/postgresql/*/bin; apt-get install postgresql)")
    bindir = bins[-1].parent
    root = Path(tempfile.mkdtemp(prefix="pgolf-pg-"))
    os.chmod(root, 0o755)
    as_user: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", _free_port()

    def run(*args: str) -> None:
        done = subprocess.run([*as_user, *args], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            pytest.fail(f"{' '.join(args)} failed: {done.stdout}{done.stderr}")

    run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "pgolf", "--no-sync")
    run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w", "-t", "60", "-o",
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    try:
        run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "pgolf", "sweep")
        yield f"postgresql+psycopg2://pgolf@127.0.0.1:{port}/sweep"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def test_a_postgresql_server_serves_as_storage_for_two_workers(tmp_path, fake_env, monkeypatch, postgres_url):
    _two_workers_share_the_study(tmp_path, fake_env, monkeypatch, postgres_url)
    assert not (tmp_path / "out" / "study.db").exists()


# ----------------------------------------------------------------------------- jobs, devices, pruning

def test_jobs_get_one_gpu_each_or_a_fixed_number_of_cpu_threads():
    assert [s["CUDA_VISIBLE_DEVICES"] for s in device_slots(2, 3, 2, ["0", "1", "2", "3"])] == ["0,1", "2,3"]
    assert [s["OMP_NUM_THREADS"] for s in device_slots(2, 3, 2, ["0", "1", "2", "3"])] == ["3", "3"]
    cpu = device_slots(3, 2, 1, [])
    assert all(s == {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"} for s in cpu) and len(cpu) == 3
    with pytest.raises(SlotError, match="needs 3 GPUs; 2 visible"):
        device_slots(3, None, 1, ["0", "1"])


def test_two_jobs_run_trials_side_by_side_each_on_its_own_device(tmp_path, fake_env, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_SLEEP", "0.3")
    spec = write_spec(tmp_path, trials=5)
    sweep_here(spec, tmp_path / "out", jobs=2, threads=1, gpus=["5", "7"])
    starts = fake_env()
    assert {r["cuda"] for r in starts} == {"5", "7"} and {r["omp"] for r in starts} == {"1"}
    assert len(finished(study_of(spec, tmp_path / "out"))) == 5 and len(starts) == 6 * 2
    by_trial = {}
    for r in starts:  # a trial's seeds run on one device
        by_trial.setdefault(Path(r["out"]).name.split("-")[0], set()).add(r["cuda"])
    assert all(len(devices) == 1 for devices in by_trial.values())


def test_pruning_stops_hopeless_trials_from_their_validation_losses_and_is_off_by_default(tmp_path, fake_env, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_VAL_SLEEP", "0.4")
    space = {"model.smear": {"choices": ["none", "pre_norm", "post_norm"]},
             "optim.matrix_lr": {"low": 0.005, "high": 0.2, "log": True}}
    spec = write_spec(tmp_path, space=space, seeds=[1337], trials=6, sampler_seed=3,
                      pruning={"pruner": "median", "val_every": 20, "startup_trials": 1})
    summary = sweep_here(spec, tmp_path / "out")
    study = study_of(spec, tmp_path / "out")
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    complete = [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if role(t) != "base"]
    assert pruned and complete
    for t in pruned:  # stopped mid-run: worse than the median of earlier trials at that step, and no result
        assert not (tmp_path / "out" / "runs" / f"t{t.number:04d}-s1337" / "result.json").exists()
        assert max(t.intermediate_values) < 100
    assert summary["best"]["trial"] in {t.number for t in complete} | {0}
    with_val = [r for r in fake_env() if "train.val_every" in r["settings"]]
    assert len(with_val) == len(fake_env()) - 1  # every search trial; never the base
    # off by default: no run gets train.val_every
    plain = tmp_path / "plain"
    plain.mkdir()
    before = len(fake_env())
    sweep_here(write_spec(plain, trials=2), plain / "out")
    assert all("train.val_every" not in r["settings"] for r in fake_env()[before:])


_WRITES_THEN_WAITS = """
import json, sys, time
from pathlib import Path
out = Path(sys.argv[sys.argv.index("--out") + 1]); out.mkdir(parents=True)
(out / "log.jsonl").write_text(json.dumps({"step": 20, "val_loss": 9.0, "val_bpb": 3.6}) + "\\n")
if sys.argv[1] == "finished":
    (out / "result.json").write_text(json.dumps({"val_bpb": 1.25, "val_loss": 3.1}))
time.sleep(60)
"""


@pytest.mark.parametrize("stage", ["finished", "mid_run"])
def test_a_stop_that_lands_after_the_run_finished_keeps_its_result(tmp_path, stage):
    # the log is read up to poll_s late: a run can have written result.json when the monitor says stop
    from pgolf.sweep.runner import RunRequest, RunStopped, run_training
    req = RunRequest("baseline", "tiny", 1, {}, tmp_path / "run", tmp_path / "run.log", {})
    command = [sys.executable, "-c", _WRITES_THEN_WAITS, stage]
    if stage == "finished":
        time_limit = time.time() + 30
        record = run_training(command, req, monitor=lambda *_: True, poll_s=0.5)
        assert record["val_bpb"] == 1.25 and time.time() < time_limit
    else:
        with pytest.raises(RunStopped, match="stopped at step 20"):
            run_training(command, req, monitor=lambda *_: True, poll_s=0.5)
