"Reliability of what a run folder says: per-member randomness, checkpoint digests, resume refusals, one trainer per folder, signals."
import os, signal, socket, subprocess, sys, textwrap, time
from pathlib import Path

import pandas as pd, pytest, torch

from dropout_residual import train as T, config as CF, checkpoint as CK
from dropout_residual.data import shakespeare
from dropout_residual.config import GPTConfig

TIMING = ["tokens_per_s", "time_s", "member"]

@pytest.fixture(scope="module")
def ds(): return shakespeare(download=False)

def _run(ds, seeds, rates, **kw):
    m = GPTConfig.smoke(n_members=len(seeds), n_layer=2, n_embd=16, embd_dropout=0.1, attn_dropout=rates, skip_dropout=0.05)
    t = CF.TrainConfig.smoke(**{**dict(max_iters=6, eval_interval=3, eval_iters=2, log_interval=1, seed=seeds), **kw})
    return T.train(m, t, ds, progress=False)

def _member(res, e):
    return {k: v[e] for k, v in res.model.state_dict().items()}, \
        res.history[res.history.member == e].drop(columns=TIMING).reset_index(drop=True)

def test_a_members_numbers_do_not_depend_on_its_group(ds):
    "Seed 11 at rate 0.2: member 0 of a group of 2 and member 2 of a group of 3 (other seeds, other rates) end bitwise equal."
    (wa, ha), (wg, hg) = _member(_run(ds, [11, 4], (0.2, 0.1)), 0), _member(_run(ds, [3, 5, 11], (0.0, 0.4, 0.2)), 2)
    for k in wa: assert torch.equal(wa[k], wg[k]), k
    pd.testing.assert_frame_equal(ha, hg)
    # alone (E=1) the layers take their E == 1 shortcuts (F.linear, not bmm), so rounding differs (without those
    # shortcuts it is bitwise equal too); the masks are the same ones: a different mask would move the weights far more
    wo, ho = _member(_run(ds, [11], 0.2), 0)
    for k in wa: torch.testing.assert_close(wo[k], wg[k], rtol=0, atol=1e-6)
    pd.testing.assert_frame_equal(ho, hg, rtol=1e-5)

# ---------------------------------------------------------------- helpers: a tiny run, child processes
HERE = Path(__file__).resolve().parent
REPO = HERE.parent

def _env(**kw):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(HERE), env.get("PYTHONPATH", "")])
    return {**env, "IN_TEST": "1", **kw}

def _free_port() -> int:
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); return s.getsockname()[1]

def _child(code: str, *args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], capture_output=True, text=True,
                          env=_env(), timeout=300, **kw)

TINY = dict(analysis_ckpts=None, ckpt_interval=None, log_interval=1)

# ---------------------------------------------------------------- 4. a longer run, when the lr schedule does not move
def test_an_unfinished_run_grows_with_explicit_lr_decay_iters_as_if_it_had_been_that_long(tmp_path, monkeypatch):
    from fixtures import tiny_configs, tiny_data
    straight = T.train(*tiny_configs(max_iters=12, lr_decay_iters=8, **TINY), data=tiny_data(), progress=False)
    orig, calls = T.clip_grad_norm_per_member, {"n": 0}
    def stop_at_step_4(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5: raise KeyboardInterrupt   # before step 4's update: the checkpoint is of step 4
        return orig(*a, **k)
    monkeypatch.setattr(T, "clip_grad_norm_per_member", stop_at_step_4)
    with pytest.raises(KeyboardInterrupt): T.train(*tiny_configs(max_iters=8, lr_decay_iters=8, **TINY), data=tiny_data(), out_dir=tmp_path, progress=False)
    monkeypatch.undo()
    assert CK.load_checkpoint(tmp_path/"ckpt.pt")["step"] == 4
    grown = T.train(*tiny_configs(max_iters=12, lr_decay_iters=8, **TINY), data=tiny_data(), out_dir=tmp_path, progress=False)
    for k, v in straight.model.state_dict().items(): assert torch.equal(v, grown.model.state_dict()[k]), k
    pd.testing.assert_frame_equal(straight.history.drop(columns=TIMING), grown.history.drop(columns=TIMING))
    assert CK.load_checkpoint(tmp_path/"ckpt.pt")["train_config"]["max_iters"] == 12

# ---------------------------------------------------------------- 9. a directory where ckpt.pt should be
def test_a_ckpt_directory_is_refused_and_the_finished_run_is_left_as_it_was(tmp_path):
    from fixtures import run_copy, tiny_configs, tiny_data
    run = run_copy(tmp_path)
    (run/"ckpt.pt").unlink(); (run/"ckpt.pt").mkdir()
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with pytest.raises(CK.CheckpointError, match="ckpt.pt is a directory"):
        T.train(*tiny_configs(), data=tiny_data(), out_dir=run, progress=False)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before   # summary.json and history.csv kept

def test_nan_weights_in_an_analysis_checkpoint_blame_the_file_and_tensor(tmp_path):
    from fixtures import run_copy
    from bad_inputs import edit_ckpt
    run = run_copy(tmp_path)
    f = CK.RunFolder(run).analysis_files()[4]
    edit_ckpt(f, lambda st: st["model"]["wte.weight"].view(-1)[3].fill_(float("inf")))
    with pytest.raises(CK.CheckpointError, match=f"checkpoint {f} holds non-finite weights .* in tensor wte.weight"): CK.load_weights(f)

def test_sample_on_an_unfinished_run_says_where_it_stopped(tmp_path):
    import contextlib, io
    from bad_inputs import unfinished_follows
    from dropout_residual.cli import main
    unfinished_follows(tmp_path)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert main(["sample", "--run", str(tmp_path/"run"), "--tokens", "5"]) == 0
    assert "stopped at step 4 of 8" in err.getvalue()

# ---------------------------------------------------------------- 6. one trainer per run folder, across processes
def test_a_second_trainer_on_one_folder_fails_at_once(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time
        from dropout_residual.checkpoint import RunFolder
        with RunFolder(sys.argv[1]).lock():
            print("locked", flush=True); time.sleep(120)
        """), str(tmp_path/"r")], stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.monotonic()
        r = subprocess.run(["dropout-residual", "train", "--preset", "smoke", "--out", str(tmp_path/"r"), "--quiet"],
                           capture_output=True, text=True, env=_env(), timeout=120)
        assert r.returncode == 75 and "is being trained by another process" in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert time.monotonic() - t0 < 60 and not (tmp_path/"r"/"config.json").exists()   # at once, nothing written
    finally:
        holder.kill(); holder.wait()

# ---------------------------------------------------------------- 7. SIGTERM checkpoints at a step boundary, exit 143
SIGTERM_CHILD = """
import os, signal, sys
from dropout_residual import train as T
from dropout_residual.cli import main
orig, calls = T.clip_grad_norm_per_member, {"n": 0}
def hook(*a, **k):
    calls["n"] += 1
    if calls["n"] == 3: os.kill(os.getpid(), signal.SIGTERM)   # a real SIGTERM in the middle of step 2
    return orig(*a, **k)
if sys.argv[2] == "term": T.clip_grad_norm_per_member = hook
sys.exit(main(["train", "--preset", "smoke", "--out", sys.argv[1], "--quiet", "--set", "max_iters=6", "--set", "eval_interval=3",
               "--set", "ckpt_interval=100", "--set", "log_interval=1"]))
"""

def test_sigterm_checkpoints_at_the_step_boundary_and_exits_143(tmp_path):
    r = _child(SIGTERM_CHILD, tmp_path/"t", "term")
    assert r.returncode == 143, r.stderr[-2000:]
    assert "terminated (SIGTERM): checkpoint of step 3" in r.stdout
    ck = CK.load_checkpoint(tmp_path/"t"/"ckpt.pt")
    assert ck["kind"] == "interrupt" and ck["step"] == 3 and not (tmp_path/"t"/"summary.json").exists()
    hist = pd.read_csv(tmp_path/"t"/"history.csv")
    assert hist.step.max() < ck["step"]                                       # history.csv is not ahead of the checkpoint
    pd.testing.assert_frame_equal(hist, pd.DataFrame(ck["history"]), check_dtype=False)
    assert _child(SIGTERM_CHILD, tmp_path/"t", "resume").returncode == 0      # resumes, and ends as an uninterrupted run
    assert _child(SIGTERM_CHILD, tmp_path/"s", "straight").returncode == 0
    a, b = CK.load_checkpoint(tmp_path/"t"/"ckpt.pt"), CK.load_checkpoint(tmp_path/"s"/"ckpt.pt")
    for k in b["model"]: assert torch.equal(a["model"][k], b["model"][k]), k

# ---------------------------------------------------------------- 8. stale torchrun variables time out
@pytest.mark.parametrize("rank", ["0", "1"])
def test_stale_torchrun_variables_time_out_naming_them(tmp_path, rank):
    port = _free_port()
    env = _env(RANK=rank, WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), **{T.DIST_TIMEOUT_ENV: "3"})
    t0 = time.monotonic()
    r = subprocess.run(["dropout-residual", "train", "--preset", "smoke", "--out", str(tmp_path/"r"), "--quiet"],
                       capture_output=True, text=True, env=env, timeout=180)
    assert time.monotonic() - t0 < 120
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    for v in (f"RANK={rank}", "WORLD_SIZE=2", "MASTER_ADDR=127.0.0.1", f"MASTER_PORT={port}", T.DIST_TIMEOUT_ENV):
        assert v in r.stderr, (v, r.stderr)
    assert f"rank {rank} of 2: waiting up to 3 s for the other ranks at 127.0.0.1:{port}" in r.stderr, r.stderr   # said before it waits

def test_a_run_begun_with_global_rng_masks_resumes_them_bitwise(tmp_path, monkeypatch):
    "A checkpoint written before per-member mask generators (no 'masks' entry) continues with torch's global RNG, bitwise."
    from fixtures import tiny_configs, tiny_data
    m, t = tiny_configs(model=dict(n_members=2, attn_dropout=0.1, embd_dropout=0.1), max_iters=8, seed=[3, 11], **TINY)
    monkeypatch.setattr(T, "_mask_generators", lambda *a: [])           # the masks as the trainer drew them before
    old = T.train(m, t, data=tiny_data(), progress=False)
    orig, calls = T.clip_grad_norm_per_member, {"n": 0}
    def stop_at_step_4(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5: raise KeyboardInterrupt
        return orig(*a, **k)
    monkeypatch.setattr(T, "clip_grad_norm_per_member", stop_at_step_4)
    with pytest.raises(KeyboardInterrupt): T.train(m, t, data=tiny_data(), out_dir=tmp_path, progress=False)
    monkeypatch.undo()
    from bad_inputs import edit_ckpt
    edit_ckpt(tmp_path/"ckpt.pt", lambda st: [rs.pop("masks") for rs in st["rank_states"]])   # as an older trainer wrote it
    resumed = T.train(m, t, data=tiny_data(), out_dir=tmp_path, progress=False)
    for k, v in old.model.state_dict().items(): assert torch.equal(v, resumed.model.state_dict()[k]), k
    new = T.train(m, t, data=tiny_data(), progress=False)                 # a fresh run draws per-member masks: other numbers
    assert not all(torch.equal(v, new.model.state_dict()[k]) for k, v in old.model.state_dict().items())
