"""The CUDA paths: TF32 and fused AdamW, bf16 autocast, torch.compile (default and reduce-overhead = CUDA graphs) with
live dropout rates, stacked members, KV-cache generation and checkpoint resume on the GPU. Skipped without a GPU (CI has
none); `tools/gpu_check.sh` runs them on a lent one. With `DROPOUT_RESIDUAL_CUDA_RECORD=path`, each test appends the
figures it compared (one JSON line) to that file."""
import contextlib, json, os, sys
import pytest, torch

from dropout_residual import train as T, checkpoint as CK, schedules as S
from dropout_residual.config import GPTConfig, TrainConfig
from dropout_residual.data import TokenData, shakespeare
from dropout_residual.model import GPT

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
STEPS = 200   # the window for "same losses as float32 eager"

def record(name: str, **figures):
    "Append `figures` to the record file named by DROPOUT_RESIDUAL_CUDA_RECORD (when set)."
    path = os.environ.get("DROPOUT_RESIDUAL_CUDA_RECORD")
    if path:
        with open(path, "a") as f: f.write(json.dumps({"test": name, **figures}) + "\n")

@pytest.fixture(scope="module")
def ds(): return shakespeare(download=False)

@contextlib.contextmanager
def no_tf32():
    "TF32 off inside (float32 rounding only), as it was after."
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try: yield
    finally: torch.backends.cuda.matmul.allow_tf32 = old

def small(**kw):
    "A model the GPU trains 200 steps of in seconds: 2 members, 2 layers, n_embd 64, block 64, no dropout (so paths compare)."
    return GPTConfig.smoke(**{**dict(n_members=2, n_layer=2, n_head=2, n_embd=64, block_size=64), **kw})

def tcfg(**kw):
    return TrainConfig.smoke(**{**dict(max_iters=STEPS, batch_size=16, block_size=64, warmup_iters=20, eval_interval=100,
                                       eval_iters=10, log_interval=1, ckpt_interval=None, device="cuda", seed=[1, 2],
                                       dtype="float32"), **kw})

def losses(res) -> torch.Tensor:
    "Per-step training loss (steps x members) of a result."
    h = res.history.dropna(subset=["train_loss"]).pivot_table(index="step", columns="member", values="train_loss")
    return torch.tensor(h.values)

@pytest.fixture(scope="module")
def eager(ds): return T.train(small(), tcfg(), ds)

def test_device_setup_tf32_fused_adamw_and_auto_dtype():
    dev = torch.device("cuda")
    T.setup_device(dev)
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert T.resolve_dtype("auto", dev) == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32)
    opt = T.configure_optimizer(GPT(small()).to(dev), tcfg())
    assert opt.defaults["fused"] is True

@pytest.mark.parametrize("path", ["bfloat16", "compile-default", "compile-reduce-overhead"])
def test_path_matches_float32_eager_over_200_steps(ds, eager, path):
    "bf16 autocast and compiled training give float32 eager's losses to bf16 tolerance, step by step, over 200 steps."
    kw = dict(dtype="bfloat16") if path == "bfloat16" else dict(compile=True, compile_mode=path.removeprefix("compile-"))
    res = T.train(small(), tcfg(**kw), ds)
    a, b = losses(eager), losses(res)
    assert a.shape == b.shape == (STEPS, 2) and torch.isfinite(b).all()
    rel = ((a - b).abs() / a).max().item()
    tail = (a[-50:].mean() - b[-50:].mean()).abs().item()
    record(f"path_{path}", max_rel_step_diff=rel, last50_mean_diff=tail, eager_final=a[-1].tolist(), path_final=b[-1].tolist(),
           val_eager=eager.summary["members"][0].get("final_val_loss"), val_path=res.summary["members"][0].get("final_val_loss"))
    assert rel < 0.05, f"{path}: a step's loss differs from float32 eager by {rel:.3%}"
    assert tail < 0.01, f"{path}: last-50-step mean loss differs by {tail:.4f}"

def test_cudagraphs_read_live_per_member_dropout_rates():
    "Under reduce-overhead (CUDA graphs), a rate set after capture reaches the replay: a member at p=0 equals eval mode."
    with no_tf32():                                   # float32 rounding only, between the eval and the train kernels
        torch.manual_seed(0)
        m = GPT(small(embd_dropout=0.1, attn_dropout=0.1, proj_dropout=0.1, mlp_dropout=0.1)).cuda()
        net = T.compile_model(m, "reduce-overhead")
        x = torch.randint(0, 65, (2, 4, 64), device="cuda")
        def loss(train: bool):
            m.train(train)
            torch.compiler.cudagraph_mark_step_begin()
            with torch.no_grad(): return net(x, x)[1].clone()
        ref = loss(False)
        outs = []
        for rates in ([0.0, 0.0], [0.0, 0.5], [0.0, 0.0], [0.5, 0.0]):
            m.set_dropout("all", rates)
            outs.append(loss(True))
        record("cudagraph_rates", eval=ref.tolist(), train=[o.tolist() for o in outs])
        close = lambda a, b: torch.allclose(a, b, rtol=1e-4, atol=1e-4)
        assert close(outs[0], ref)                                      # p=0 everywhere: identity
        assert close(outs[1][0], ref[0]) and not close(outs[1][1], ref[1])   # member 1 at p=0.5: its masks are live
        assert close(outs[2], ref)                                      # back to 0: the replay follows
        assert not close(outs[3][0], ref[0]) and close(outs[3][1], ref[1])

def test_stacked_members_match_each_member_alone():
    "A stacked model's forward and gradients on the GPU equal each member's alone (TF32 off: float32 rounding only)."
    with no_tf32():
        torch.manual_seed(0)
        m = GPT(small(n_members=3)).cuda()
        x = torch.randint(0, 65, (3, 4, 64), device="cuda")
        loss = m(x, x)[1]
        loss.sum().backward()
        worst = 0.0
        for i in range(3):
            one = m.member(i)
            l1 = one(x[i:i + 1], x[i:i + 1])[1]
            l1.sum().backward()
            torch.testing.assert_close(l1[0], loss[i], rtol=1e-5, atol=1e-6)
            g, g1 = m.wte.weight.grad[i], one.wte.weight.grad[0]
            worst = max(worst, ((g - g1).norm() / g.norm()).item())
        record("stacked_vs_alone", worst_rel_grad_diff=worst)
        assert worst < 1e-4

def test_kv_cache_generation_matches_recomputation(eager):
    "Greedy samples with the KV cache equal full recomputation in float32 (TF32 off); bf16 autocast logits stay close."
    with no_tf32():
        m = eager.model.eval()
        idx = torch.zeros(1, 1, dtype=torch.long, device="cuda")
        cached = m.generate(idx, 200, temperature=0, use_cache=True, window="slide")
        full = m.generate(idx, 200, temperature=0, use_cache=False, window="slide")
        with torch.autocast("cuda", torch.bfloat16): half = m.generate(idx, 200, temperature=0, use_cache=True, window="slide")
        ctx = cached[..., -64:]
        with torch.no_grad():
            l32 = m(ctx)[0].float()
            with torch.autocast("cuda", torch.bfloat16): l16 = m(ctx)[0].float()
        rel = ((l16 - l32).norm() / l32.norm()).item()
        speed = {c: T.measure_generation(m, n_tokens=200, repeats=3, use_cache=c)["tokens_per_s"] for c in (True, False)}
        record("kv_cache", cache_equals_full=bool(torch.equal(cached, full)), bf16_logit_rel_err=rel,
               bf16_greedy_token_agreement=(half == cached).float().mean().item(), tokens_per_s=speed)
        assert torch.equal(cached, full)
        assert rel < 2e-2, f"bf16 logits differ from float32 by {rel:.2%} (relative norm)"

def test_interrupted_run_resumes_on_cuda_as_if_uninterrupted(ds, tmp_path, monkeypatch):
    "Dropout on (the CUDA mask generators' states matter): stop at step 5, resume, end where a straight run ends."
    m = small(embd_dropout=0.1, attn_dropout=0.1, mlp_dropout=0.1)
    t = tcfg(max_iters=12, warmup_iters=2, eval_interval=4, ckpt_interval=4)
    sched = S.schedule_from_spec("linear:p0=0.3,pf=0,n_steps=12")
    straight = T.train(m, t, ds, sched, out_dir=tmp_path/"straight")
    orig, calls = TokenData.get_batch, {"n": 0}
    def get_batch(self, split, *a, **k):
        if sys._getframe(1).f_code.co_name == "draw":
            calls["n"] += 1
            if calls["n"] == 7: raise KeyboardInterrupt
        return orig(self, split, *a, **k)
    monkeypatch.setattr(TokenData, "get_batch", get_batch)
    with pytest.raises(KeyboardInterrupt): T.train(m, t, ds, sched, out_dir=tmp_path/"resumed")
    monkeypatch.undo()
    assert CK.load_checkpoint(tmp_path/"resumed"/"ckpt.pt")["kind"] == "interrupt"
    resumed = T.train(m, t, ds, sched, out_dir=tmp_path/"resumed")
    sa, sb = straight.model.state_dict(), resumed.model.state_dict()
    diff = max((sa[k].float() - sb[k].float()).abs().max().item() for k in sa)
    record("resume", bitwise=all(torch.equal(sa[k], sb[k]) for k in sa), max_abs_weight_diff=diff)
    assert diff <= 1e-6
    ha, hb = (r.history.dropna(subset=["train_loss"]).train_loss.to_numpy() for r in (straight, resumed))
    assert abs(ha - hb).max() <= 1e-5
