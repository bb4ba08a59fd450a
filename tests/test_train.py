"End-to-end checks of the training loop: bitwise resume, per-member isolation, NaN stops, DDP under torchrun, the CLI."
import contextlib, io, json, os, shutil, signal, subprocess, sys, textwrap
from pathlib import Path

import pandas as pd, pytest, torch

from dropout_residual import train as T
from dropout_residual import config as CF, checkpoint as CK
from dropout_residual import schedules as S
from dropout_residual.data import TokenData, shakespeare
from dropout_residual.config import GPTConfig

TIMING = ["tokens_per_s", "time_s"]

@pytest.fixture(scope="module")
def ds(): return shakespeare(download=False)

def cfgs(**kw):
    "Two members, dropout on (so the RNG matters), evals and an adaptive schedule (so schedule state matters)."
    m = GPTConfig.smoke(n_members=2, n_layer=2, n_embd=16, embd_dropout=0.1, attn_dropout=0.1, skip_dropout=0.05)
    t = CF.TrainConfig.smoke(**{**dict(max_iters=8, eval_interval=2, eval_iters=2, log_interval=1, ckpt_interval=None, seed=[3, 11]), **kw})
    return m, t

def scheds(): return [S.schedule_from_spec("adaptive:p0=0.2,step_size=0.05,sites=mlp+proj"), S.schedule_from_spec("linear:p0=0.3,pf=0,n_steps=8")]

def assert_same_run(a, b):
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa: assert torch.equal(sa[k], sb[k]), k
    pd.testing.assert_frame_equal(a.history.drop(columns=TIMING), b.history.drop(columns=TIMING))

@pytest.fixture(scope="module")
def straight(ds, tmp_path_factory):
    m, t = cfgs()
    return T.train(m, t, ds, scheds(), out_dir=tmp_path_factory.mktemp("straight"))

def _interrupt_at(monkeypatch, ds, n_calls, how):
    "Make the n-th training batch draw interrupt the run (SIGINT, as Ctrl-C does, or a raw KeyboardInterrupt)."
    orig, calls = TokenData.get_batch, {"n": 0}
    def get_batch(self, split, *a, **k):
        if sys._getframe(1).f_code.co_name == "draw":  # the trainer's training-batch draw, not an eval batch
            calls["n"] += 1
            if calls["n"] == n_calls:
                if how == "sigint": os.kill(os.getpid(), signal.SIGINT)
                elif how == "raise": raise KeyboardInterrupt
                else: raise RuntimeError("simulated crash")
        return orig(self, split, *a, **k)
    monkeypatch.setattr(TokenData, "get_batch", get_batch)

@pytest.mark.parametrize("how", ["sigint", "raise"])
def test_interrupt_then_resume_is_bitwise_identical(ds, tmp_path, monkeypatch, straight, how):
    m, t = cfgs()
    _interrupt_at(monkeypatch, ds, 5, how)    # draw 1 is the first batch, draw k+2 the prefetch inside iteration k: here iteration 3
    with pytest.raises(KeyboardInterrupt): T.train(m, t, ds, scheds(), out_dir=tmp_path)
    monkeypatch.undo()
    ck = CK.load_checkpoint(tmp_path/"ckpt.pt")
    assert ck["kind"] == "interrupt" and ck["step"] == (4 if how == "sigint" else 3)  # SIGINT waits for the step's end
    assert not (tmp_path/"summary.json").exists()
    part = pd.read_csv(tmp_path/"history.csv")
    assert part.step.max() < 8
    resumed = T.train(m, t, ds, scheds(), out_dir=tmp_path)
    assert_same_run(straight, resumed)
    assert json.loads((tmp_path/"summary.json").read_text())["done"] is True

def test_crash_resumes_from_the_periodic_checkpoint(ds, tmp_path, monkeypatch, straight):
    m, t = cfgs()
    _interrupt_at(monkeypatch, ds, 7, "crash")  # in iteration 5, after the checkpoint at step 4
    with pytest.raises(RuntimeError, match="simulated crash"): T.train(m, dataclass_replace(t, ckpt_interval=4), ds, scheds(), out_dir=tmp_path)
    monkeypatch.undo()
    assert CK.load_checkpoint(tmp_path/"ckpt.pt")["step"] == 4
    resumed = T.train(m, dataclass_replace(t, ckpt_interval=4), ds, scheds(), out_dir=tmp_path)
    assert_same_run(straight, resumed)
    on_disk = pd.read_csv(tmp_path/"history.csv")
    pd.testing.assert_frame_equal(on_disk.drop(columns=TIMING), resumed.history.drop(columns=TIMING), check_dtype=False)

def dataclass_replace(c, **kw):
    import dataclasses
    return dataclasses.replace(c, **kw)

def test_history_summary_and_files(straight):
    h, out = straight.history, straight.out_dir
    assert list(h.columns) == T.HISTORY_COLUMNS
    assert h[h.val_loss.notna()].step.unique().tolist() == [0, 2, 4, 6, 8]
    assert h[h.train_loss.notna()].step.unique().tolist() == list(range(8))
    # member 1 follows its linear schedule on every site; member 0's adaptive one drives mlp and proj only
    m1 = h[(h.member == 1) & h.train_loss.notna()]
    assert m1.rate_attn.tolist() == pytest.approx([0.3 * (1 - s / 8) for s in range(8)])
    m0 = h[(h.member == 0) & h.train_loss.notna()]
    assert (m0.rate_attn == 0.1).all() and (m0.rate_embd == 0.1).all() and (m0.rate_mlp != 0).all()
    s = json.loads((out/"summary.json").read_text())
    assert s["done"] and len(s["members"]) == 2 and s == straight.summary
    for m in (0, 1):
        hm = h[h.member == m]
        sm = s["members"][m]
        assert sm["best_val_loss"] == pytest.approx(hm.val_loss.min())
        assert sm["final_train_loss"] == pytest.approx(hm.dropna(subset=["train_loss"]).train_loss.iloc[-1])
        assert sm["final_val_loss"] == pytest.approx(hm[hm.step == 8].val_loss.item())
    cfg = json.loads((out/"config.json").read_text())
    assert cfg["train"]["seed"] == [3, 11] and cfg["schedules"][0]["kind"] == "adaptive"

def test_member_isolated_from_another_members_exploding_gradients(ds, monkeypatch):
    "Member 1's gradients are multiplied by 1e8: member 0's trajectory is bitwise unchanged (per-member clipping)."
    m, t = cfgs(max_iters=4, eval_interval=4)
    base = T.train(m, t, ds)
    orig = T._build_model
    def exploding(cfg, seeds):
        model = orig(cfg, seeds)
        for p in model.parameters():
            scale = torch.tensor([1.0, 1e8]).view(2, *([1] * (p.dim() - 1)))
            p.register_hook(lambda g, scale=scale: g * scale)
        return model
    monkeypatch.setattr(T, "_build_model", exploding)
    hot = T.train(m, t, ds)
    sb, sh = base.model.state_dict(), hot.model.state_dict()
    for k in sb:
        if k.startswith("rate_") or "gates" in k: continue
        assert torch.equal(sb[k][0], sh[k][0]), k          # member 0: identical
    assert any(not torch.equal(sb[k][1], sh[k][1]) for k in sb)  # member 1: moved differently
    assert torch.isfinite(torch.cat([v.flatten().float() for v in sh.values()])).all()

def test_nonfinite_loss_stops_and_keeps_last_checkpoint(ds, tmp_path, monkeypatch):
    m, t = cfgs(ckpt_interval=2)
    orig, calls = T._build_model, {"n": 0}
    def poisoned(cfg, seeds):
        model = orig(cfg, seeds)
        def hook(mod, inp, out):
            if not mod.training: return out
            calls["n"] += 1
            return (out[0], out[1] * torch.tensor([1.0, float("nan")])) if calls["n"] == 4 else out  # step 3, member 1
        model.register_forward_hook(hook)
        return model
    monkeypatch.setattr(T, "_build_model", poisoned)
    with pytest.raises(T.NonFiniteLossError, match="member 1 .* at step 3") as e: T.train(m, t, ds, out_dir=tmp_path)
    assert (e.value.step, e.value.member) == (3, 1) and "ckpt.pt is intact" in str(e.value)
    ck = CK.load_checkpoint(tmp_path/"ckpt.pt")
    assert ck["step"] == 2 and all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())

def test_nonfinite_gradients_stop_before_a_checkpoint(ds, tmp_path, monkeypatch):
    "Finite loss but NaN gradients for member 0 in step 1: stopped at step 1 (gradient norm) before the step-2 checkpoint."
    m, t = cfgs(ckpt_interval=2, log_interval=4)   # the NaN must be caught at the checkpoint's read, not only at a log step
    orig, calls = T._build_model, {"n": 0}
    def poisoned(cfg, seeds):
        model = orig(cfg, seeds)
        def hook(g):
            calls["n"] += 1
            return g * torch.tensor([float("nan"), 1.0]).view(2, *([1] * (g.dim() - 1))) if calls["n"] == 2 else g
        model.wte.weight.register_hook(hook)   # a leaf's hook: once per step
        return model
    monkeypatch.setattr(T, "_build_model", poisoned)
    with pytest.raises(T.NonFiniteLossError, match="member 0 has a non-finite gradient norm .* at step 1"): T.train(m, t, ds, out_dir=tmp_path)
    assert not (tmp_path/"ckpt.pt").exists()  # the first checkpoint (step 2) would have held NaN weights: none written
    assert T.nonfinite_members(orig(m, [0, 1])) == []

def test_bad_checkpoint_and_other_config_are_refused(ds, tmp_path):
    m, t = cfgs(max_iters=2, eval_interval=2)
    T.train(m, t, ds, out_dir=tmp_path)
    with pytest.raises(CK.CheckpointError, match=r"another configuration \(train.lr"):
        T.train(m, dataclass_replace(t, lr=5e-4), ds, out_dir=tmp_path)
    raw = (tmp_path/"ckpt.pt").read_bytes()
    (tmp_path/"ckpt.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CK.CheckpointError, match=r"ckpt.pt is corrupt or truncated"):
        T.train(m, t, ds, out_dir=tmp_path)
    res = T.train(m, t, ds, out_dir=tmp_path, resume=False)  # start over is always possible
    assert res.summary["done"]

def test_analysis_checkpoints_log_spaced(ds, tmp_path):
    m, t = cfgs(max_iters=8, eval_interval=8, analysis_ckpts="log")
    T.train(m, t, ds, out_dir=tmp_path)
    want = S.log_spaced_steps(8)
    got = sorted(int(p.stem.split("_")[1]) for p in (tmp_path/"analysis").glob("step_*.pt"))
    assert got == want
    a = CK.load_checkpoint(tmp_path/"analysis"/"step_0000008.pt")
    ck = CK.load_checkpoint(tmp_path/"ckpt.pt")
    for k, v in a["model"].items(): assert torch.equal(v, ck["model"][k]), k

def test_load_run_and_generation_speed(straight):
    model, tok, c = CK.load_run(straight.out_dir)
    assert c["model"] == straight.model.config and c["step"] == 8 and tok.vocab_size == 65
    for k, v in straight.model.state_dict().items(): assert torch.equal(v, model.state_dict()[k]), k
    r = T.measure_generation(model, n_tokens=8, repeats=2, warmup=1, use_cache=False)
    assert r["tokens_per_s"] > 0 and len(r["seconds"]) == 2 and r["n_members"] == 2
    r = T.measure_generation(model, n_tokens=40, repeats=1, warmup=0, window="slide")   # past block_size=16
    assert r["window"] == "slide" and r["tokens_per_s"] > 0

def test_compile_mode_field():
    "compile_mode: None (torch's default) or one of torch.compile's modes, checked; it round-trips through JSON."
    t = CF.TrainConfig.smoke(compile=True, compile_mode="max-autotune-no-cudagraphs")
    assert CF.TrainConfig.from_dict(json.loads(json.dumps(t.to_dict()))) == t
    assert CF.TrainConfig.smoke().compile_mode is None
    with pytest.raises(ValueError, match="compile_mode='fast' must be None"): CF.TrainConfig.smoke(compile_mode="fast")
    assert T.uses_cudagraphs(True, "reduce-overhead", "cuda") and not T.uses_cudagraphs(True, "reduce-overhead", "cpu")
    assert not T.uses_cudagraphs(True, None, "cuda") and not T.uses_cudagraphs(True, "max-autotune-no-cudagraphs", "cuda")

DDP_SCRIPT = textwrap.dedent('''
    import hashlib, os, sys, torch
    from dropout_residual import train as T
    from dropout_residual import config as CF, checkpoint as CK
    from dropout_residual.config import GPTConfig
    out = sys.argv[1]
    m = GPTConfig.smoke(n_members=2, n_layer=2, n_embd=16, attn_dropout=0.1)
    t = CF.TrainConfig.smoke(max_iters=4, eval_interval=2, eval_iters=1, device="cpu")
    res = T.train(m, t, out_dir=out + "/run")
    h = hashlib.sha256()
    for k, v in sorted(res.model.state_dict().items()): h.update(k.encode()); h.update(v.numpy().tobytes())
    open(f"{out}/rank{os.environ['RANK']}.sha", "w").write(h.hexdigest() + " " + repr(res.summary["members"][0]["final_val_loss"]))
''')

def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]

def test_ddp_two_cpu_ranks_end_identical(tmp_path):
    (tmp_path/"ddp.py").write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTEST_CURRENT_TEST", None)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
                        str(tmp_path/"ddp.py"), str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    h0, h1 = (tmp_path/"rank0.sha").read_text(), (tmp_path/"rank1.sha").read_text()
    assert h0 == h1
    ck = CK.load_checkpoint(tmp_path/"run"/"ckpt.pt")
    assert ck["world_size"] == 2 and len(ck["rank_states"]) == 2
    assert not torch.equal(ck["rank_states"][0]["data"][0], ck["rank_states"][1]["data"][0])  # ranks see different data
    assert json.loads((tmp_path/"run"/"summary.json").read_text())["world_size"] == 2

def test_cli_train_and_sample(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTEST_CURRENT_TEST", None)
    exe = shutil.which("dropout-residual") or str(Path(sys.executable).parent/"dropout-residual")
    out = tmp_path/"run"
    r = subprocess.run([exe, "train", "--preset", "smoke", "--out", str(out), "--set", "max_iters=4", "--set", "n_layer=2",
                        "--device", "cpu", "--quiet"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["done"] and summary["iters"] == 4
    assert {"ckpt.pt", "config.json", "history.csv", "summary.json", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    from dropout_residual.cli import main  # the rest in-process: the same entry point, without another torch import
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf): assert main(["sample", "--run", str(out), "--tokens", "20", "--prompt", "ROMEO:"]) == 0
    assert buf.getvalue().startswith("ROMEO:") and len(buf.getvalue()) >= 26
    err = io.StringIO()
    with contextlib.redirect_stderr(err): assert main(["train", "--preset", "smoke", "--out", str(out), "--set", "max_iter=4"]) == 2
    assert "did you mean 'max_iters'" in err.getvalue()
    with contextlib.redirect_stderr(err): assert main(["sample", "--run", str(tmp_path/"nothing")]) == 2
    assert "not a run folder" in err.getvalue()

def test_train_is_a_loop_of_train_step(ds):
    "setup_or_resume, draw, _set_rates and train_step by hand (the step bench times) give bitwise train's weights and losses."
    m, t = cfgs(max_iters=4, eval_interval=4)
    ref = T.train(m, t, ds, scheds())
    s = T.setup_or_resume(m, t, ds, T.member_schedules(scheds(), 2))
    s.model.train()
    x, y, _ = T.draw(s, ds)
    losses = []
    with torch.enable_grad():
        for it in range(4):
            if it % t.eval_interval == 0: S.observe_members(s.scheds, it, T.evaluate(s.model, ds, t, s.seeds, it)["val"].tolist())
            T._set_rates(s, it)
            loss, gnorm, (x, y, _) = T.train_step(s, x, y, prefetch=lambda: T.draw(s, ds))
            losses.append(loss)
    for k, v in ref.model.state_dict().items(): assert torch.equal(v, s.model.state_dict()[k]), k
    h = ref.history.dropna(subset=["train_loss"])
    for it in range(4): assert h[h.step == it].train_loss.tolist() == losses[it].tolist()
