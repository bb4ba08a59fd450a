"""Faults, for real: training subprocesses killed with SIGKILL at a step and in the middle of a checkpoint
write, a sweep killed midway, torn and corrupted run files, NaN losses, and Ctrl-C in a notebook-driven
(in-process) run. Every resumed run must end bitwise equal (CPU) to an uninterrupted one.

A killed run is a child process started from this file (`python tests/test_faults.py MODE OUT K`); its
hooks wrap functions of the trainer *in the child only* to pick the moment: `clip_grad_norm_per_member`
runs once per training step (so its k-th call is step k), and `os.replace` is the rename that ends an
atomic write. The kill itself is a real SIGKILL from outside or from the process to itself."""
import dataclasses, json, os, random, shutil, signal, subprocess, sys, time
from pathlib import Path

import pandas as pd
import pytest
import torch

HERE = Path(__file__).resolve().parent
MAX_ITERS, CKPT_EVERY = 12, 3
TIMING_COLS = ["tokens_per_s", "time_s"]   # the only history columns allowed to differ between runs

# ---------------------------------------------------------------- the run every fault test replays
def fault_run_args():
    "A tiny 2-member model with dropout on, an adaptive and a linear schedule (schedule state must resume too)."
    from fixtures import tiny_configs, tiny_data
    from dropout_residual.schedules import schedule_from_spec
    m, t = tiny_configs(max_iters=MAX_ITERS, ckpt_interval=CKPT_EVERY, eval_interval=4, log_interval=1,
                        warmup_iters=2, lr_decay_iters=MAX_ITERS, analysis_ckpts=None)
    m = dataclasses.replace(m, n_members=2, attn_dropout=0.1, mlp_dropout=0.1, embd_dropout=0.1)
    scheds = [schedule_from_spec("adaptive:p0=0.1,step_size=0.05"), schedule_from_spec(f"linear:p0=0.2,pf=0,n_steps={MAX_ITERS}")]
    return m, t, tiny_data(), scheds

def run_train(out_dir, resume=True):
    from dropout_residual.train import train
    m, t, data, scheds = fault_run_args()
    return train(m, t, data=data, schedules=scheds, out_dir=out_dir, resume=resume, progress=False)

def _weights(x):
    sd = x.state_dict() if hasattr(x, "state_dict") else x
    return {k: v.detach().cpu().clone() for k, v in sd.items()}

def assert_same_run(res, ref, what=""):
    "Final weights and history bitwise equal (timings aside)."
    a, b = _weights(res.model), _weights(ref.model)
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"{what}: weights differ from the uninterrupted run in {diff[:5]}"
    ha, hb = (h.drop(columns=[c for c in TIMING_COLS if c in h.columns]).reset_index(drop=True) for h in (res.history, ref.history))
    pd.testing.assert_frame_equal(ha, hb, check_exact=True, obj=f"{what}: history")
    strip = lambda s: [{k: v for k, v in m.items() if k not in ("wall_s", "train_s", "tokens_per_s")} for m in s["members"]]
    assert strip(res.summary) == strip(ref.summary), f"{what}: summaries differ"

@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    "The uninterrupted run."
    return run_train(tmp_path_factory.mktemp("reference")/"run")

def ckpt_step(path):
    from dropout_residual.checkpoint import load_checkpoint
    return int(load_checkpoint(path)["step"])

# ---------------------------------------------------------------- the child process
def _signal_on_call(module, name: str, k: int, sig=signal.SIGKILL):
    "Send `sig` to this process at the start of call number k (from 0) of `module.name`."
    orig, calls = getattr(module, name), [0]
    def hooked(*a, **kw):
        if calls[0] == k: os.kill(os.getpid(), sig)
        calls[0] += 1
        return orig(*a, **kw)
    setattr(module, name, hooked)

def _kill_at_step(T, k: int):
    "SIGKILL this process in the middle of training step k (after backward): the clip runs once a step."
    _signal_on_call(T, "clip_grad_norm_per_member", k)

def _child(mode: str, out: str, k: int):
    "Train the fault run in this process, dying as `mode` says at step (or checkpoint) `k`."
    import dropout_residual.train as T
    if mode == "kill-at-step":            # SIGKILL itself in the middle of step k (after backward)
        _kill_at_step(T, k)
    elif mode == "hang-in-ckpt-write":    # the k-th ckpt.pt write: temp file complete, hang before the rename
        real, n = os.replace, [0]
        def replace(src, dst, *a, **kw):
            if Path(dst).name == "ckpt.pt":
                n[0] += 1
                if n[0] == k:
                    (Path(out).parent/"hanging").write_text(str(src))
                    time.sleep(600)
            return real(src, dst, *a, **kw)
        os.replace = replace
    elif mode in ("sweep-kill-in-training", "sweep-kill-mid-split"):
        from dropout_residual import sweep as SW
        if mode == "sweep-kill-in-training":   # step k counted over all groups' training steps
            _kill_at_step(T, k)
        else:                                 # the k-th run folder written out of a trained group
            _signal_on_call(SW, "_write_member", k)
        run_sweep(out)
        return
    elif mode == "cli-sigint":            # the terminal's Ctrl-C: SIGINT to itself in step k of `dropout-residual train`
        from dropout_residual import cli
        _signal_on_call(T, "clip_grad_norm_per_member", k, signal.SIGINT)
        sys.exit(cli.main(cli_train_args(out)))
    run_train(out)

def start_child(mode, out, k):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, str(Path(__file__)), mode, str(out), str(k)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

def fault_rng():
    seed = int(os.environ.get("FAULT_SEED", random.SystemRandom().randrange(10**6)))
    return seed, random.Random(seed)

# ---------------------------------------------------------------- the killed children, started together
SWEEP_KILLS = {"sweep-kill-in-training": 8 + 5,   # group 2, step 5 (its checkpoint of step 4 exists)
               "sweep-kill-mid-split": 3}          # group 2 trained, its first run written, the second not

@pytest.fixture(scope="module")
def children(tmp_path_factory):
    "Every child process of this file, started at once (each spends ~10 s importing torch; together they overlap)."
    seed, rng = fault_rng()
    jobs = {"kill-at-step": rng.randrange(CKPT_EVERY, MAX_ITERS),   # a step after the first checkpoint (step 3)
            "hang-in-ckpt-write": 2,                                 # the second periodic checkpoint (step 6)
            "cli-sigint": 5,                                         # step 5 of `dropout-residual train`
            **SWEEP_KILLS}
    started = {}
    for mode, k in jobs.items():
        d = tmp_path_factory.mktemp(mode)
        started[mode] = (start_child(mode, d/"run", k), d, k, seed)
    yield started
    for p, *_ in started.values():
        if p.poll() is None: p.kill(); p.wait()

def _killed(p, what):
    _, err = p.communicate(timeout=300)
    assert p.returncode == -signal.SIGKILL, f"{what}: the child was not killed (rc={p.returncode}): {err[-2000:]}"

# ---------------------------------------------------------------- SIGKILL at a random step
def test_sigkill_at_random_step_then_resume_is_bitwise_identical(children, reference):
    p, d, k, seed = children["kill-at-step"]
    out = d/"run"
    _killed(p, f"FAULT_SEED={seed}, SIGKILL in step {k}")
    assert not (out/"summary.json").exists()
    saved = ckpt_step(out/"ckpt.pt")
    assert saved == k - k % CKPT_EVERY, f"FAULT_SEED={seed}: killed in step {k}, the checkpoint holds step {saved}"
    assert_same_run(run_train(out), reference, f"FAULT_SEED={seed}, SIGKILL in step {k}")

# ---------------------------------------------------------------- SIGKILL during a checkpoint write
def test_sigkill_during_checkpoint_write_keeps_previous_checkpoint(children, reference):
    p, d, k, _ = children["hang-in-ckpt-write"]
    out = d/"run"
    deadline = time.time() + 300
    while not (d/"hanging").exists():
        assert p.poll() is None, f"child ended early: {p.communicate()[1][-2000:]}"
        assert time.time() < deadline, "child never reached the second checkpoint write"
        time.sleep(0.05)
    tmp = Path((d/"hanging").read_text())
    assert tmp.exists() and tmp.parent == out and tmp.stat().st_size > 0, "the temporary checkpoint is not there"
    assert ckpt_step(out/"ckpt.pt") == CKPT_EVERY           # the previous one, untouched so far
    os.kill(p.pid, signal.SIGKILL)
    _killed(p, "hang-in-ckpt-write")
    assert ckpt_step(out/"ckpt.pt") == CKPT_EVERY, "the previous checkpoint did not survive the kill"
    res = run_train(out)
    assert_same_run(res, reference, "SIGKILL between the temp write and the rename of a checkpoint")
    leftovers = sorted(p.name for p in out.glob(".ckpt.pt.*.tmp"))
    assert leftovers == [], leftovers   # the dead writer's temp file was never read, and the resumed run cleared it

# ---------------------------------------------------------------- Ctrl-C in a terminal
def cli_train_args(out):
    return ["train", "--preset", "smoke", "--set", "max_iters=10", "--set", "ckpt_interval=3", "--set", "log_interval=1",
            "--set", "attn_dropout=0.1", "--schedule", "adaptive:p0=0.1,step_size=0.05", "--device", "cpu", "--quiet", "--out", str(out)]

def test_ctrl_c_in_the_terminal_exits_130_and_the_same_command_resumes(children, tmp_path):
    from dropout_residual import cli
    from dropout_residual.checkpoint import load_run
    p, d, k, _ = children["cli-sigint"]
    _, err = p.communicate(timeout=300)
    assert p.returncode == 130 and "resume" in err, f"rc={p.returncode}: {err[-2000:]}"
    out = d/"run"
    assert ckpt_step(out/"ckpt.pt") == k + 1 and not (out/"summary.json").exists()
    assert cli.main(cli_train_args(out)) == 0                      # the same command again
    assert cli.main(cli_train_args(tmp_path/"ref")) == 0           # uninterrupted
    a, b = load_run(out)[0].state_dict(), load_run(tmp_path/"ref")[0].state_dict()
    assert all(torch.equal(a[n], b[n]) for n in a), "the resumed command ends with other weights"
    ha, hb = (pd.read_csv(x/"history.csv").drop(columns=TIMING_COLS) for x in (out, tmp_path/"ref"))
    pd.testing.assert_frame_equal(ha, hb)

# ---------------------------------------------------------------- SIGKILL a sweep midway
SWEEP_LABELS = 4   # the first four schedules of paper 2, two groups of two members

def run_sweep(root):
    from dropout_residual import papers as PP, sweep as SW
    labels = PP.get_experiment("paper2").labels()[:SWEEP_LABELS]
    return SW.sweep("paper2", "smoke", root=root, labels=labels, max_members=2, device="cpu", progress=False)

@pytest.fixture(scope="module")
def reference_sweep(tmp_path_factory):
    return run_sweep(tmp_path_factory.mktemp("reference_sweep"))

def _finished(root):
    "run id -> (bytes of summary.json, of ckpt.pt, their mtimes) for every finished run folder."
    from dropout_residual.store import run_state
    return {f.name: tuple((f/n).read_bytes() for n in ("summary.json", "ckpt.pt")) + tuple((f/n).stat().st_mtime_ns for n in ("summary.json", "ckpt.pt"))
            for f in sorted((Path(root)/"paper2").glob("[!_]*")) if run_state(f) == "done"}

@pytest.mark.parametrize("mode", list(SWEEP_KILLS))
def test_sigkill_sweep_midway_then_rerun(children, reference_sweep, mode):
    p, d, k, _ = children[mode]
    root = d/"run"
    _killed(p, mode)
    before = _finished(root)
    assert 0 < len(before) < SWEEP_LABELS, f"killed {mode}: {len(before)} runs finished"
    res = run_sweep(root)
    assert res.trained == SWEEP_LABELS - len(before), f"the rerun trained {res.trained} runs; {SWEEP_LABELS - len(before)} were unfinished"
    after = _finished(root)
    assert sorted(after) == sorted(reference_sweep.runs.run_id), "not every run finished"
    for rid, v in before.items(): assert after[rid] == v, f"run {rid} had finished before the kill but was written again"
    pd.testing.assert_frame_equal(res.table, reference_sweep.table, check_exact=True)
    cols = ["label", "seed", "run_id", "done", "best_val_loss", "final_train_loss", "final_val_loss", "best_val_step", "iters"]
    pd.testing.assert_frame_equal(res.runs[cols], reference_sweep.runs[cols], check_exact=True)
    assert run_sweep(root).trained == 0 and _finished(root) == after      # a third call trains nothing, writes nothing

# ---------------------------------------------------------------- damaged run files
def _truncate(path):
    b = path.read_bytes(); path.write_bytes(b[: len(b) // 2]); return path

def _disk_history_is(out, hist):
    "history.csv on disk holds exactly `hist` (timings aside)."
    disk = pd.read_csv(out/"history.csv")
    drop = lambda h: h.drop(columns=[c for c in TIMING_COLS if c in h.columns]).reset_index(drop=True)
    pd.testing.assert_frame_equal(drop(disk), drop(hist), check_exact=False, rtol=1e-12, check_dtype=False)

def test_resume_rewrites_a_damaged_history_csv(tmp_path):
    "The checkpoint holds the history; a truncated history.csv in the run folder is replaced from it, never kept."
    from fixtures import tiny_configs, tiny_data, tiny_run
    from dropout_residual.train import train
    out = Path(shutil.copytree(tiny_run(), tmp_path/"run"))
    _truncate(out/"history.csv"); _truncate(out/"summary.json")
    res = train(*tiny_configs(), data=tiny_data(), out_dir=out, progress=False)   # a finished run, run again
    assert json.loads((out/"summary.json").read_text())["done"] is True
    _disk_history_is(out, res.history)

def test_sweep_rerun_refuses_a_damaged_summary(reference_sweep, tmp_path):
    "A finished run whose summary.json is torn: the rerun names the file instead of silently retraining or skipping it."
    root = Path(shutil.copytree(reference_sweep.root, tmp_path/"runs"))
    victim = root/"paper2"/reference_sweep.runs.run_id[1]/"summary.json"
    _truncate(victim)
    with pytest.raises(ValueError) as e: run_sweep(root)
    assert str(victim) in str(e.value)

# ---------------------------------------------------------------- Ctrl-C in a notebook-driven run
@pytest.fixture
def hook_step(monkeypatch):
    "hook_step(k, action): run `action(grads)` inside training step k (after backward, before the update)."
    import dropout_residual.train as T
    def install(k, action):
        orig, calls = T.clip_grad_norm_per_member, [0]
        def hooked(parameters, *a, **kw):
            parameters = list(parameters)
            if calls[0] == k: action(parameters)
            calls[0] += 1
            return orig(parameters, *a, **kw)
        monkeypatch.setattr(T, "clip_grad_norm_per_member", hooked)
        return lambda: monkeypatch.setattr(T, "clip_grad_norm_per_member", orig)
    return install

def _partial_state(out, k):
    h = pd.read_csv(out/"history.csv")
    assert h.step.max() < MAX_ITERS and not (out/"summary.json").exists()
    return h

def test_sigint_in_process_saves_partial_history_and_resumes(reference, tmp_path, hook_step):
    """Jupyter's 'interrupt kernel' is a SIGINT: the step finishes, a checkpoint and the history are saved, resume is exact
    (and the history.csv on disk, damaged here before the resume, ends equal to the returned history)."""
    out, k = tmp_path/"run", 7
    undo = hook_step(k, lambda _: os.kill(os.getpid(), signal.SIGINT))
    with pytest.raises(KeyboardInterrupt): run_train(out)
    undo()
    h = _partial_state(out, k)
    assert h.step.max() == k, f"history.csv should hold the steps up to the interrupted one ({k}), holds up to {h.step.max()}"
    assert ckpt_step(out/"ckpt.pt") == k + 1
    _truncate(out/"history.csv")
    res = run_train(out)
    assert_same_run(res, reference, f"SIGINT in step {k}, resumed")
    _disk_history_is(out, res.history)

def test_keyboardinterrupt_mid_step_resumes_exactly(reference, tmp_path, hook_step):
    "A KeyboardInterrupt raised inside a step (a second Ctrl-C, or one raised by user code) must not corrupt the resume."
    out, k = tmp_path/"run", 7
    def boom(_): raise KeyboardInterrupt
    undo = hook_step(k, boom)
    with pytest.raises(KeyboardInterrupt): run_train(out)
    undo()
    _partial_state(out, k)
    assert ckpt_step(out/"ckpt.pt") <= k
    assert_same_run(run_train(out), reference, f"KeyboardInterrupt raised inside step {k}, resumed")

# ---------------------------------------------------------------- NaN
def _assert_good_checkpoint(path, before_step):
    from dropout_residual.checkpoint import load_checkpoint
    st = load_checkpoint(path)
    assert st["step"] <= before_step
    bad = [k for k, v in st["model"].items() if v.is_floating_point() and not torch.isfinite(v).all()]
    assert not bad, f"{path} (step {st['step']}) is the 'last good checkpoint' but holds non-finite weights: {bad[:4]}"

def test_nan_loss_names_step_and_member(tmp_path, monkeypatch):
    "NaN injected into member 1's loss at step 7: the error names step 7 and member 1; the last checkpoint is good."
    from dropout_residual.model import GPT
    from dropout_residual.train import NonFiniteLossError
    orig, calls = GPT.forward, [0]
    def forward(self, idx, targets=None):
        logits, loss = orig(self, idx, targets)
        if self.training and loss is not None:
            if calls[0] == 7: loss = loss * torch.tensor([1.0, float("nan")])
            calls[0] += 1
        return logits, loss
    monkeypatch.setattr(GPT, "forward", forward)
    out = tmp_path/"run"
    with pytest.raises(NonFiniteLossError) as e: run_train(out)
    assert (e.value.step, e.value.member) == (7, 1)
    assert "step 7" in str(e.value) and "member 1" in str(e.value)
    _assert_good_checkpoint(out/"ckpt.pt", 7)
    assert str(out/"ckpt.pt") in str(e.value)

def test_nan_weights_never_reach_a_checkpoint(tmp_path, hook_step):
    "Member 1's gradients turn NaN in step 5, so its weights are NaN from step 6 on, when a checkpoint is due."
    from dropout_residual.train import NonFiniteLossError
    hook_step(2 * CKPT_EVERY - 1, lambda ps: [p.grad[1].fill_(float("nan")) for p in ps if p.grad is not None])
    out = tmp_path/"run"
    with pytest.raises(NonFiniteLossError) as e: run_train(out)
    assert e.value.member == 1 and "member 1" in str(e.value) and f"step {e.value.step}" in str(e.value)
    _assert_good_checkpoint(out/"ckpt.pt", e.value.step)

def test_absurd_lr_stops_with_a_clear_error(tmp_path):
    from dropout_residual.train import NonFiniteLossError, train
    m, t, data, _ = fault_run_args()
    t = dataclasses.replace(t, lr=1e30, min_lr=1e30, warmup_iters=0, ckpt_interval=1)
    with pytest.raises(NonFiniteLossError) as e: train(m, t, data=data, out_dir=tmp_path/"run", progress=False)
    assert f"step {e.value.step}" in str(e.value) and f"member {e.value.member}" in str(e.value)
    assert e.value.step >= 1
    _assert_good_checkpoint(tmp_path/"run"/"ckpt.pt", e.value.step)

if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2], int(sys.argv[3]))
