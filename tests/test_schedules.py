"Slower checks of the schedules: every kind's round trips, bit-identical resume, adaptive invariants, bad input."
import io, json, math, random

import pytest, torch
from dataclasses import fields

from dropout_residual import schedules as S
from dropout_residual import config as CF, viz as VZ

ALL = [S.ConstantDropout(0.1), S.LinearDropout(0.3, 0.05, 4000, sites=("attn",)), S.ExponentialDropout(0.25, 0.01, 700),
       S.CosineDropout(0.2, 0.05, 1200, sites=("mlp", "skip")), S.LinearDropout(sites="nanogpt"), S.AdaptiveDropout(0.2, 0.03, 0.05, 0.4, 0.001),
       S.AdaptiveDropout(reference="best"), S.EarlyDropout(0.15, 300, "linear"), S.EarlyDropout(), S.LateDropout(0.3, 800)]

def _val_losses(seed, n):
    "A noisy, mostly decreasing val-loss curve that also goes up (so the adaptive schedule moves both ways)."
    rng = random.Random(seed)
    return [2.5 * math.exp(-t / 400) + 1.4 + 0.0001 * t + rng.gauss(0, 0.02) for t in range(n)]

def _run(schedule, losses, start, stop, eval_interval=25):
    out = []
    for t in range(start, stop):
        if t % eval_interval == 0: schedule.observe(t, losses[t])
        out.append(schedule.rate(t))
    return out

@pytest.mark.parametrize("s", ALL, ids=lambda s: s.to_spec())
def test_round_trips(s):
    d = json.loads(json.dumps(s.to_dict()))
    assert S.schedule_from_dict(d) == s
    assert S.schedule_from_spec(s.to_spec()) == s
    assert json.dumps(S.schedule_from_dict(d).to_dict(), sort_keys=True) == json.dumps(s.to_dict(), sort_keys=True)
    assert "state" not in json.dumps(s.to_dict())  # configuration only: a run hash does not change as a run goes

@pytest.mark.parametrize("s", ALL, ids=lambda s: s.to_spec())
@pytest.mark.parametrize("cut", [1, 499, 500, 1333])
def test_resume_is_bit_identical(s, cut):
    "Stop at `cut`, save the config and state as a checkpoint does, rebuild, continue: the same floats as never stopping."
    n, losses = 2000, _val_losses(7, 2000)
    full = _run(s.clone(), losses, 0, n)
    first = s.clone(); head = _run(first, losses, 0, cut)
    buf = io.BytesIO(); torch.save({"schedule": first.to_dict(), "state": first.state_dict()}, buf); buf.seek(0)
    ck = torch.load(buf, weights_only=True)
    resumed = S.schedule_from_dict(ck["schedule"]); resumed.load_state_dict(ck["state"])
    assert head + _run(resumed, losses, cut, n) == full  # exact float equality
    assert resumed.state_dict() == _after(s, losses, n).state_dict()

def _after(s, losses, n):
    s = s.clone(); _run(s, losses, 0, n); return s

@pytest.mark.parametrize("seed", range(5))
def test_adaptive_invariants(seed):
    a = S.AdaptiveDropout(p0=0.2, step_size=0.03, p_min=0.05, p_max=0.35)
    # a random walk of losses (i.i.d. noise would be mean-reverting and keep the rate near p0)
    rng, prev_val, rates, v = random.Random(seed), None, [], 2.0
    for i in range(300):
        v += rng.gauss(0, 0.1); before = a.rate(i * 10)
        after = a.observe(i * 10, v)
        assert a.p_min <= after <= a.p_max
        if prev_val is not None:
            want = before - 0.03 if v < prev_val else before + 0.03
            assert after == pytest.approx(min(a.p_max, max(a.p_min, want)), abs=1e-11)
        prev_val = v; rates.append(after)
    assert {a.p_min, a.p_max} <= set(rates), "300 random evals reach both bounds"
    assert [a.rate(i * 10 + 5) for i in range(300)] == rates  # the history replays every past step

def test_adaptive_resume_reobserve_is_noop():
    a = S.AdaptiveDropout(step_size=0.05)
    a.observe(0, 2.0); a.observe(100, 1.0)
    st = a.state_dict()
    b = S.schedule_from_dict(a.to_dict()); b.load_state_dict(st)
    assert b.observe(100, 1.0) == 0.15 and b.state_dict() == st
    with pytest.raises(ValueError, match="steps must increase"): b.observe(100, 0.5)

def test_adaptive_state_is_checked():
    a = S.AdaptiveDropout(p_max=0.3)
    good = a.state_dict()
    with pytest.raises(ValueError, match=r"state\['p'\]=0.9"): a.load_state_dict({**good, "p": 0.9})
    with pytest.raises(ValueError, match="must start at step 0"): a.load_state_dict({**good, "history": [[5, 0.2]]})
    with pytest.raises(ValueError, match="expected"): a.load_state_dict({**good, "extra": 1})
    a.load_state_dict(good)
    assert a.state_dict() == good

@pytest.mark.parametrize("cls,field", [(c, f.name) for c in S.SCHEDULES.values() for f in fields(c)
                                       if f.name not in ("sites", "mode", "reference")])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1, 1.5, "x", True])
def test_bad_values_name_the_field(cls, field, bad):
    if field == "min_delta" and bad == 1.5: return  # any non-negative min_delta is valid
    with pytest.raises(ValueError) as e: cls(**{field: bad})
    assert field in str(e.value)

@pytest.mark.parametrize("spec,msg", [
    ("", "is empty"), ("warmup", "unknown dropout schedule kind='warmup'"), ("adaptve", "did you mean 'adaptive'"),
    ("adaptive:stepsize=0.1", "did you mean 'step_size'"), ("adaptive:step_size=0", "step_size=0.0 must be > 0"),
    ("adaptive:p_min=0.3,p0=0.2", "p_min <= p0 <= p_max"), ("cosine:n_steps=-5", "n_steps=-5"),
    ("exponential:pf=0", "never reaches 0"), ("early:mode=cosine", "mode='cosine'"), ("late:sites=", "must be name=value"),
    ("constant:sites=residual", "'residual' is not a dropout site"), ("linear:p0=0.2,", None),
])
def test_spec_errors(spec, msg):
    if msg is None: assert S.schedule_from_spec(spec) == S.LinearDropout(p0=0.2); return
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace("[", r"\[")): S.schedule_from_spec(spec)

def test_cosine_lr_matches_nanogpt_everywhere():
    lr = S.CosineLR(6e-4, 6e-5, 2000, 600_000)  # nanoGPT's GPT-2 defaults
    def get_lr(it):
        if it < 2000: return 6e-4 * (it + 1) / (2000 + 1)
        if it > 600_000: return 6e-5
        return 6e-5 + 0.5 * (1.0 + math.cos(math.pi * (it - 2000) / (600_000 - 2000))) * (6e-4 - 6e-5)
    for it in list(range(0, 3000)) + list(range(3000, 700_000, 997)):
        assert lr(it) == pytest.approx(get_lr(it), rel=1e-12, abs=0)
    assert S.CosineLR(1e-3, 1e-3, 10, 10)(10) == 1e-3  # decay over zero steps: straight to min_lr
    assert S.CosineLR(**lr.to_dict()) == lr

def test_log_spaced_steps_properties():
    for n in list(range(0, 300)) + [4999, 5000, 50_000, 143_000, 10**6 + 7]:
        for k in (1, 2, 7, 20, 143, 1000):
            s = S.log_spaced_steps(n, k)
            assert s[0] == 0 and s[-1] == n and s == sorted(set(s))
            assert len(s) <= min(k, max(n, 1)) + n.bit_length() + 1
    assert S.log_spaced_steps(143_000, 143) == S.PYTHIA_STEPS and len(S.PYTHIA_STEPS) == 154
    # paper 3's 27 checkpoints are a subset of Pythia's list
    paper3 = [0] + [2**i for i in range(10)] + [1000] + [3000 + 10_000 * i for i in range(15)]
    assert len(paper3) == 27 and set(paper3) <= set(S.PYTHIA_STEPS)

def test_members_and_speed():
    import timeit
    ms = S.for_members([S.AdaptiveDropout(), "linear", {"kind": "late", "cutoff": 3}, S.EarlyDropout(sites=("attn",))], 4)
    r = S.member_rates(ms, 5, defaults={"embd": 0.1})
    assert r["embd"] == pytest.approx([0.2, 0.2 - 0.2 * 5 / 5000, 0.2, 0.1], abs=1e-15) and r["attn"][3] == 0.2
    ms16 = S.for_members("adaptive", 16)
    S.observe_members(ms16, 0, torch.linspace(1, 2, 16))
    assert S.observe_members(ms16, 250, [1.5] * 16)[:2] == [0.21, 0.21] and S.observe_members(ms16, 500, [1.0] * 16)[0] == 0.2
    per_call = min(timeit.repeat(lambda: S.member_rates(ms16, 123), number=100, repeat=3)) / 100
    assert per_call < 5e-3, per_call  # generous: a loaded 2-core machine; typically ~10 us

def test_plot_schedules_returns_figure():
    import matplotlib; matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig = VZ.plot_schedules([S.LinearDropout(), S.CosineLR()], 300)
    assert isinstance(fig, matplotlib.figure.Figure) and fig.axes[0].get_ylabel() == "dropout rate"
    fig2 = VZ.plot_schedules([S.ExponentialDropout()], 100)
    plt.close(fig); plt.close(fig2)
    with pytest.raises(ValueError, match="steps=0"): VZ.plot_schedules([S.LinearDropout()], 0)

def test_sites_match_the_model():
    model = pytest.importorskip("dropout_residual.model")
    assert tuple(model.DROPOUT_SITES) == tuple(CF.DROPOUT_SITES)
