"End-to-end checks of the run store and sweeps: kill and rerun, grouping, hashes, collisions, Ray, the CLI."
import json, os, signal, subprocess, sys, time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import dropout_residual

from dropout_residual import utils as U, store as ST, papers as PP, stats as SS, sweep as SW

METRICS = ["best_val_loss", "final_train_loss", "final_val_loss"]

def _sweep(root, **kw):
    kw = {"preset": "smoke", "progress": False, **kw}
    return SW.sweep(kw.pop("experiment", "paper1"), root=root, **kw)

def _mtimes(root, experiment="paper1"):
    return {p.parent.name: p.stat().st_mtime_ns for p in (Path(root)/experiment).glob("*/summary.json")}

def _done(root, experiment="paper1"):
    return [p.parent.name for p in (Path(root)/experiment).glob("*/summary.json")
            if json.loads(p.read_text()).get("done")]

# --- hashes -----------------------------------------------------------------------------------------

def test_hash_is_stable_across_processes():
    specs = PP.experiment_runs("paper2", "smoke", seeds=2)
    code = ("from dropout_residual import papers as PP;"
            "print(' '.join(s.run_id for s in PP.experiment_runs('paper2', 'smoke', seeds=2)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "123"})
    assert out.stdout.split() == [s.run_id for s in specs]
    assert len({s.run_id for s in specs}) == len(specs) == 14
    # every field counts, except where the run happens
    s = specs[0]
    assert ST.config_hash(ST.normalise_config(s.model_cfg, s.train_cfg.__class__(**{**s.train_cfg.to_dict(), "device": "cpu", "out_dir": "/x"}), s.schedule)) == s.run_id
    assert ST.config_hash(s.config, "9.9.9") != s.run_id

# --- collisions -------------------------------------------------------------------------------------

def test_collision_is_refused(tmp_path):
    spec = PP.experiment_runs("paper2", "smoke", labels=["fixed"])[0]
    folder = ST.prepare_run(spec, tmp_path)
    meta = json.loads((folder/"run.json").read_text())
    meta["config"]["train"]["lr"] = 0.5                       # another config under this hash
    (folder/"run.json").write_text(json.dumps(meta))
    with pytest.raises(ST.RunCollisionError, match="hash"):
        _sweep(tmp_path, experiment="paper2", labels=["fixed"])
    # a consistent folder (its name is the hash of its own config) asked for another config is refused too
    with pytest.raises(ST.RunCollisionError, match="fields differ: train.lr"):
        ST.check_run_folder(_forge(tmp_path, spec), spec.config)

def _forge(tmp_path, spec):
    "A run folder named by the hash of a config with another lr; returns the config it is asked for."
    other = json.loads(json.dumps(spec.config)); other["train"]["lr"] = 0.5
    forged = tmp_path/"paper2"/ST.config_hash(other)
    U.write_json(forged/"run.json", {"config": other, "version": dropout_residual.__version__})
    return forged  # check_run_folder(forged, spec.config) -> fields differ

# --- grouping -----------------------------------------------------------------------------------------

def test_grouping_and_member_equivalence(tmp_path):
    specs = PP.experiment_runs("paper1", "smoke")
    groups = SW.plan_groups(specs, tmp_path/"a", "cpu", max_members=8)
    sizes = [len(json.loads((g/"group.json").read_text())["members"]) for g in groups]
    assert sizes == [7, 7, 6]
    assert SW.plan_groups(specs, tmp_path/"a", "cpu", max_members=8) == groups   # the plan is on disk: same groups
    # different shapes never share a group
    p3 = PP.experiment_runs("paper3", "smoke", seeds=2)
    g3 = SW.plan_groups(p3, tmp_path/"b", "cpu")
    assert len(g3) == 7 and all(len(json.loads((g/"group.json").read_text())["members"]) == 2 for g in g3)
    # compiled runs are other runs (their masks come from torch's stream), and each trains alone, so its numbers
    # never depend on its group
    pc = PP.experiment_runs("paper1", "smoke", overrides={"compile": True})
    assert not {s.run_id for s in pc} & {s.run_id for s in specs}
    assert {s.run_id for s in PP.experiment_runs("paper1", "smoke", overrides={"compile": False})} == {s.run_id for s in specs}
    gc = SW.plan_groups(pc, tmp_path/"e", "cpu", max_members=8)
    assert len(gc) == len(pc) and all(len(json.loads((g/"group.json").read_text())["members"]) == 1 for g in gc)
    # a member without dropout computes what it computes alone (same init, same batches, no masks)
    grouped = _sweep(tmp_path/"c", overrides={"attn_dropout": 0.0, "max_iters": 4}, labels=PAPER1_SOME, max_members=4)
    alone = _sweep(tmp_path/"d", overrides={"attn_dropout": 0.0, "max_iters": 4}, labels=[PAPER1_SOME[2]], max_members=1)
    assert grouped.runs["group"].nunique() == 1 and grouped.runs.loc[0, "group"] != alone.runs.loc[0, "group"]
    g = grouped.runs.set_index("label").loc[PAPER1_SOME[2], METRICS].astype(float).to_numpy()
    a = alone.runs.set_index("label").loc[PAPER1_SOME[2], METRICS].astype(float).to_numpy()
    np.testing.assert_allclose(g, a, rtol=1e-5)

PAPER1_SOME = ["skip1-attn0-mlp0-sd0", "skip1-attn0.2-mlp0-sd0.025", "skip2-attn0.2-mlp0-sd0", "skip4-attn0.2-mlp0-sd0"]

def test_memory_aware_group_size(monkeypatch):
    s = PP.experiment_runs("paper1", "paper")[0]
    per = SW.member_bytes(s.model_cfg, s.train_cfg)
    monkeypatch.setenv(SW.GROUP_BYTES_ENV, str(3 * per + 1))
    assert SW.max_group_size(s.model_cfg, s.train_cfg, "cpu") == 3
    monkeypatch.setenv(SW.GROUP_BYTES_ENV, "1")
    assert SW.max_group_size(s.model_cfg, s.train_cfg, "cpu") == 1

# --- stats --------------------------------------------------------------------------------------------

def test_stats_t_interval_and_n1():
    from scipy import stats
    runs = pd.DataFrame({"experiment": "paper1", "label": ["a", "a", "a", "b"], "best_val_loss": [1.0, 1.2, 1.1, 2.0], "done": True})
    s = SS.summarise(runs).set_index("label")
    half = stats.t.ppf(0.975, 2) * np.std([1.0, 1.2, 1.1], ddof=1) / np.sqrt(3)
    assert s.loc["a", "n"] == 3 and np.isclose(s.loc["a", "ci_high"] - 1.1, half)
    assert np.isnan(s.loc["b", "ci_low"]) and "n=1" in s.loc["b", "note"]

# --- kill and rerun -----------------------------------------------------------------------------------

KW = dict(max_members=2, overrides={"ckpt_interval": 2})   # paper2 smoke: 7 runs in 4 groups (2, 2, 2, 1)
# the killed sweep pauses 0.3 s after each training checkpoint, so that on any machine the kill lands mid-training
KILL_SWEEP = f"""
import sys, time
import dropout_residual.train as T
from dropout_residual import checkpoint as CK
_save = CK.save_checkpoint
def slow_save(*a, **k):
    out = _save(*a, **k); time.sleep(0.3); return out
CK.save_checkpoint = slow_save
from dropout_residual import utils as U, store as ST, papers as PP, stats as SS, sweep as SW
SW.sweep('paper2', 'smoke', root=sys.argv[1], progress=True, **{KW!r})
"""

def test_kill_and_rerun(tmp_path):
    killed, ref = tmp_path/"killed", tmp_path/"ref"
    p = subprocess.Popen([sys.executable, "-c", KILL_SWEEP, str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        t0 = time.time()
        while len(_done(killed, "paper2")) < 2:           # wait until the first group has written its members ...
            assert p.poll() is None, p.stderr.read().decode()[-2000:]
            assert time.time() - t0 < 300, "the sweep made no progress"
            time.sleep(0.05)
        while not list((killed/"paper2"/"_groups").glob("*/ckpt.pt")) and p.poll() is None:
            time.sleep(0.02)                              # ... and the second one is mid-training
        p.send_signal(signal.SIGKILL)
    finally:
        p.wait()
    before, n_done = _mtimes(killed, "paper2"), len(_done(killed, "paper2"))
    assert 2 <= n_done < 7, n_done
    res = SW.sweep("paper2", "smoke", root=killed, progress=False, **KW)
    assert res.trained == 7 - n_done                       # only the unfinished runs were trained
    after = _mtimes(killed, "paper2")
    assert {r: after[r] for r in before} == before, "finished runs were written again"
    assert res.runs["done"].all() and len(res.runs) == 7
    assert not list((killed/"paper2"/"_groups").glob("*/ckpt.pt"))    # groups cleaned up
    full = SW.sweep("paper2", "smoke", root=ref, progress=False, **KW)
    cols = ["label", "seed", "run_id", "group", *METRICS]
    pd.testing.assert_frame_equal(res.runs[cols], full.runs[cols])     # the same numbers as a sweep never killed
    pd.testing.assert_frame_equal(res.table, full.table)

# --- two sweeps on one root -------------------------------------------------------------------------

HOLD_LOCK = """
import sys, time
from pathlib import Path
from dropout_residual.sweep import group_lock
with group_lock(sys.argv[1]):
    Path(sys.argv[2]).write_text("held")
    time.sleep(600)
"""

def test_a_group_another_process_trains_is_skipped_then_found(tmp_path, capsys):
    from dropout_residual.cli import main
    args = ["sweep", "paper2", "--preset", "smoke", "--max-members", "4", "--runs", str(tmp_path), "--quiet"]
    groups = SW.plan_groups(PP.experiment_runs("paper2", "smoke", 1), tmp_path, max_members=4)
    assert len(groups) == 2
    busy, held = groups[1], tmp_path/"held"
    p = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(busy), str(held)], stderr=subprocess.PIPE)
    try:
        t0 = time.time()
        while not held.exists():
            assert p.poll() is None, p.stderr.read().decode()[-2000:]
            assert time.time() - t0 < 120, "the lock holder never started"
            time.sleep(0.05)
        assert main(args) == 75                                   # EX_TEMPFAIL: the busy group is left to its holder
        err = capsys.readouterr().err
        assert f"group {busy} is being trained by pid {p.pid}" in err and "1 of 2 groups" in err, err
        members = json.loads((busy/"group.json").read_text())["members"]
        assert sorted(_done(tmp_path, "paper2")) == sorted(set(json.loads((groups[0]/"group.json").read_text())["members"]))
        assert not (busy/"ckpt.pt").exists() and not any((tmp_path/"paper2"/m/"summary.json").exists() for m in members)
    finally:
        p.kill(); p.wait()                                         # a killed holder releases its lock
    before = _mtimes(tmp_path, "paper2")
    assert main(args) == 0
    assert len(_done(tmp_path, "paper2")) == 7
    after = _mtimes(tmp_path, "paper2")
    assert {r: after[r] for r in before} == before, "the first group's runs were trained again"

# --- Ray ----------------------------------------------------------------------------------------------

def test_ray_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ValueError, match="pip install"):
        _sweep(tmp_path, executor="ray")
    from dropout_residual.cli import main
    assert main(["sweep", "paper2", "--preset", "smoke", "--executor", "ray", "--runs", str(tmp_path)]) == 2

def test_ray_executor_matches_local(tmp_path):
    ray = pytest.importorskip("ray")
    t0 = time.time()
    try: ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    except Exception as e:   # Ray's raylet gives up when its agents start slowly (a heavily loaded machine)
        if "timed out during startup" in str(e): pytest.skip(f"Ray could not start a local node here: {e}")
        raise
    try:
        r = _sweep(tmp_path/"ray", experiment="paper2", executor="ray", max_members=4)
    finally:
        ray.shutdown()
    print(f"ray: init + sweep {time.time() - t0:.1f} s")
    assert r.runs["done"].all() and r.runs["group"].nunique() == 2
    loc = _sweep(tmp_path/"local", experiment="paper2", max_members=4)
    np.testing.assert_allclose(r.runs[METRICS].astype(float).to_numpy(), loc.runs[METRICS].astype(float).to_numpy(), rtol=1e-4)

# --- the command line -----------------------------------------------------------------------------------

def test_cli_sweep_and_bad_input(tmp_path, capsys):
    from dropout_residual.cli import main
    assert main(["sweep", "paper2", "--preset", "smoke", "--seeds", "2", "--runs", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "| fixed | 2 |" in out and "1.4655" in out
    runs = ST.load_runs(tmp_path, "paper2")
    assert len(runs) == 14 and runs["done"].all()
    for args, msg in [(["sweep", "paper9"], "did you mean"), (["sweep", "paper1", "--preset", "quik"], "did you mean 'quick'"),
                      (["sweep", "paper1", "--set", "n_layers=2"], "did you mean 'n_layer'"),
                      (["reproduce", "--experiments", "paper1,papr3"], "did you mean 'paper3'")]:
        assert main(args + ["--runs", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert msg in err and len(err.strip().splitlines()) == 1, err

def test_cli_train_takes_an_experiment_and_its_preset(tmp_path, capsys):
    "`train EXPERIMENT --preset P [--label L]`: --preset is an experiment's scale, as in `sweep` and `reproduce`."
    from dropout_residual.cli import main
    out = tmp_path/"adaptive"
    args = ["train", "paper2", "--preset", "smoke", "--label", "adaptive", "--set", "max_iters=2", "--out", str(out), "--quiet"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    cfg = json.loads((out/"config.json").read_text())
    assert summary["iters"] == 2 and cfg["schedules"][0]["kind"] == "adaptive" and cfg["model"]["n_embd"] == 16
    assert main(["train", "--preset", "paper2", "--out", str(tmp_path/"x")]) == 2      # the former meaning: an error
    assert "did you mean 'paper'" in capsys.readouterr().err

def test_cli_reproduce_estimate_trains_nothing(tmp_path, capsys):
    "`reproduce --estimate`: per-experiment runs and seconds, a JSON line last, and no run folder written."
    from dropout_residual.cli import main
    argv = ["reproduce", "--preset", "smoke", "--seeds", "2", "--experiments", "paper2,paper3", "--runs", str(tmp_path), "--device", "cpu", "--estimate"]
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("paper2: 14 runs, 14 to train, about 0:0") and out[1].startswith("paper3: ")
    assert "nothing was trained" in out[2]
    rec = json.loads(out[-1])
    assert rec["command"].startswith("dropout-residual reproduce --preset smoke") and rec["preset"] == "smoke" and rec["seeds"] == 2
    assert rec["to_train"] == rec["runs"] == sum(e["runs"] for e in rec["experiments"].values()) and rec["estimate_s"] > 0
    assert not any(tmp_path.rglob("run.json"))

def test_cli_reproduce_smoke(tmp_path, capsys):
    from dropout_residual.cli import main
    assert main(["reproduce", "--preset", "smoke", "--seeds", "1", "--runs", str(tmp_path), "--quiet"]) == 0
    out = tmp_path/"results"/"smoke"
    for e in ("paper1", "paper2", "paper3"):
        for f in ("table.csv", "table.md", "claims.csv", "runs.csv", "best.png", "curves.png"):
            assert (out/f"{e}_{f}").stat().st_size > 0
    for f in ("paper1_heatmap.png", "paper2_rates.png", "paper3_cka.png", "paper3_settling.png", "paper3_per_vs_cka.png"):
        assert (out/f).stat().st_size > 0                     # the figures each experiment names
    report = (out/"report.md").read_text()
    assert "![paper3_cka](paper3_cka.png)" in report and "## Verdicts" in report
    v = pd.read_csv(out/"verdicts.csv")
    assert set(v.paper) == {"paper1", "paper2", "paper3"} and len(v) == 6 + 5 + 2 and set(v.verdict) <= {"supported", "contradicted", "inconclusive"}
    t = pd.read_csv(out/"paper1_table.csv")
    assert len(t) == 20 and t["paper_context"].notna().sum() == 2 and "diff" not in t   # smoke: the paper as context only
    assert "1.5531" in (out/"paper1_table.md").read_text()
