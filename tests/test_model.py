"The GPT: nanoGPT parity from the equations, stacked members == separate models, dropout sites, skip topologies, KV-cache generation, bad input."
import math

import numpy as np, pytest, torch
from torch.nn import functional as F

from dropout_residual.config import DROPOUT_SITES, GPTConfig, Members
from dropout_residual.model import GPT
from dropout_residual.viz import draw_topology

@pytest.fixture
def float64():
    "Build models in float64 so the parity checks can be tight."
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)

SMALL = dict(block_size=16, vocab_size=65, n_layer=4, n_head=2, n_embd=32)

def small(**kw) -> GPTConfig: return GPTConfig(**{**SMALL, **kw})

# ---- nanoGPT parity ------------------------------------------------------------------------------
def nanogpt_state_dict(cfg: GPTConfig, seed=0) -> dict:
    "A random state dict with nanoGPT model.py's names and shapes (LayerNorm weights away from 1 so they matter)."
    g = torch.Generator().manual_seed(seed)
    C, V, L = cfg.n_embd, cfg.vocab_size, cfg.n_layer
    r = lambda *s, std=0.1: torch.randn(*s, generator=g, dtype=torch.float64)*std
    sd = {"transformer.wte.weight": r(V, C), "transformer.wpe.weight": r(cfg.block_size, C)}
    shapes = {"ln_1": (C,), "attn.c_attn": (3*C, C), "attn.c_proj": (C, C), "ln_2": (C,), "mlp.c_fc": (4*C, C), "mlp.c_proj": (C, 4*C)}
    for i in range(L):
        for name, shape in shapes.items():
            p = f"transformer.h.{i}.{name}"
            sd[p + ".weight"] = 1 + r(*shape) if name.startswith("ln") else r(*shape)
            if cfg.bias: sd[p + ".bias"] = r(shape[0])
        sd[f"transformer.h.{i}.attn.bias"] = torch.ones(cfg.block_size, cfg.block_size).tril().view(1, 1, cfg.block_size, cfg.block_size)  # nanoGPT's mask buffer
    sd["transformer.ln_f.weight"] = 1 + r(C)
    if cfg.bias: sd["transformer.ln_f.bias"] = r(C)
    sd["lm_head.weight"] = sd["transformer.wte.weight"]
    return sd

def reference_forward(sd: dict, idx: torch.Tensor, n_layer: int, n_head: int) -> torch.Tensor:
    "GPT-2/nanoGPT forward written from the equations: pre-LN blocks, causal softmax attention, exact GELU MLP, tied head."
    def ln(x, p):
        mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
        return (x - mu)/torch.sqrt(var + 1e-5)*sd[p + ".weight"] + sd.get(p + ".bias", 0)
    lin = lambda x, p: x @ sd[p + ".weight"].T + sd.get(p + ".bias", 0)
    gelu = lambda x: 0.5*x*(1 + torch.erf(x/math.sqrt(2)))
    B, T = idx.shape
    x = sd["transformer.wte.weight"][idx] + sd["transformer.wpe.weight"][:T]
    C = x.shape[-1]; hd = C//n_head
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        q, k, v = lin(ln(x, p + "ln_1"), p + "attn.c_attn").split(C, dim=-1)
        q, k, v = (t.view(B, T, n_head, hd).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-1, -2)/math.sqrt(hd)).masked_fill(future, float("-inf")).softmax(-1)
        x = x + lin((att @ v).transpose(1, 2).reshape(B, T, C), p + "attn.c_proj")
        x = x + lin(gelu(lin(ln(x, p + "ln_2"), p + "mlp.c_fc")), p + "mlp.c_proj")
    return ln(x, "transformer.ln_f") @ sd["lm_head.weight"].T

@pytest.mark.parametrize("bias", [True, False])
def test_nanogpt_parity(bias, float64):
    cfg = small(bias=bias)
    sd = nanogpt_state_dict(cfg)
    model = GPT.from_nanogpt(sd, cfg).eval()
    idx = torch.randint(0, 65, (3, 16), generator=torch.Generator().manual_seed(1))
    tgt = torch.randint(0, 65, (3, 16), generator=torch.Generator().manual_seed(2))
    ref = reference_forward(sd, idx, cfg.n_layer, cfg.n_head)
    logits, loss = model(idx, tgt)
    torch.testing.assert_close(logits[0], ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(loss[0], F.cross_entropy(ref.view(-1, 65), tgt.view(-1)), rtol=1e-10, atol=1e-10)
    # training mode with all rates 0 is the same function
    torch.testing.assert_close(model.train()(idx)[0][0], ref, rtol=1e-10, atol=1e-10)
    # compiled nanoGPT checkpoints carry an _orig_mod. prefix; to_nanogpt gives the same weights back
    m2 = GPT.from_nanogpt({"_orig_mod." + k: v for k, v in sd.items()}, cfg).double()
    back = m2.to_nanogpt()
    for k, v in back.items(): torch.testing.assert_close(v, sd[k])

def test_nanogpt_bad_state_dicts():
    cfg = small()
    sd = nanogpt_state_dict(cfg)
    with pytest.raises(ValueError, match=r"transformer.wte.weight has shape \(65, 32\), but config gives \(65, 48\)"):
        GPT.from_nanogpt(sd, small(n_embd=48, n_head=2))
    with pytest.raises(ValueError, match="lacks"): GPT.from_nanogpt(sd, small(bias=True))
    untied = dict(sd, **{"lm_head.weight": sd["lm_head.weight"] + 1})
    with pytest.raises(ValueError, match="ties"): GPT.from_nanogpt(untied, cfg)

def test_from_nanogpt_replicates_to_members(float64):
    sd = nanogpt_state_dict(small())
    m = GPT.from_nanogpt(sd, small(n_members=3)).eval()
    idx = torch.randint(0, 65, (2, 16))
    logits, _ = m(idx)
    ref = reference_forward(sd, idx, 4, 2)
    for e in range(3): torch.testing.assert_close(logits[e], ref, rtol=1e-10, atol=1e-10)

# ---- members -------------------------------------------------------------------------------------
TOPOLOGIES = [dict(skips=(1,)), dict(skips=(2,), skip_mode="replace"), dict(skips=(1, 4), skip_mode="add")]

def three_singles(**kw):
    out = []
    for seed, topo in zip((10, 11, 12), TOPOLOGIES):
        torch.manual_seed(seed)
        out.append(GPT(small(**topo, **kw)))
    return out

@pytest.mark.parametrize("shared_batch", [False, True])
def test_stacked_equals_singles(shared_batch):
    "E=3 members with different weights and skip topologies == the three models run alone: logits, loss, gradients."
    singles = three_singles()
    stacked = GPT.stack(singles)
    g = torch.Generator().manual_seed(0)
    shape = (4, 16) if shared_batch else (3, 4, 16)
    x, y = torch.randint(0, 65, shape, generator=g), torch.randint(0, 65, shape, generator=g)
    logits, loss = stacked(x, y)
    assert logits.shape == (3, 4, 16, 65) and loss.shape == (3,)
    loss.sum().backward()
    for e, s in enumerate(singles):
        xe, ye = (x, y) if shared_batch else (x[e], y[e])
        le, lo = s(xe, ye)
        lo.sum().backward()
        torch.testing.assert_close(logits[e], le[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(loss[e], lo[0], rtol=1e-5, atol=1e-6)
        grads = dict(s.named_parameters())
        for name, p in stacked.named_parameters():
            torch.testing.assert_close(p.grad[e], grads[name].grad[0], rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")

def test_member_roundtrip_and_stack_of_stacks():
    singles = three_singles(attn_dropout=0.1)
    singles[1].set_dropout("skip", 0.3)
    stacked = GPT.stack([GPT.stack(singles[:2]), singles[2]])
    assert stacked.config.member_skips == ((1,), (2,), (1, 4))
    assert stacked.config.skip_mode == ("replace", "replace", "add")
    torch.testing.assert_close(stacked.dropout_rates()["skip"], torch.tensor([0.0, 0.3, 0.0]))
    for e, s in enumerate(singles):
        back = stacked.member(e)
        assert back.config.skips == s.config.skips and back.config.modes() == s.config.modes()
        for k, v in s.state_dict().items(): torch.testing.assert_close(back.state_dict()[k], v, msg=lambda m: f"{k}: {m}")
    # the stacked config alone rebuilds the same model (what the trainer writes to config.json)
    again = GPT(GPTConfig.from_dict(stacked.config.to_dict()), init=False)
    again.load_state_dict(stacked.state_dict())
    x = torch.randint(0, 65, (3, 2, 16))
    torch.testing.assert_close(again.eval()(x)[0], stacked.eval()(x)[0])

def test_members_split_inverts_stack():
    parts = [small(skips=(1,), attn_dropout=0.1), small(skips=(2,), skip_mode="add"), small(skips=(1, 4), skip_dropout=0.2),
             small(skips=(1, 2), member_skips=((),), skip_mode="add")]      # an add-mode member that uses no skip length
    for explicit in (False, True):
        stacked = Members.stack(parts, explicit=explicit)
        assert stacked.n_members == 4 and stacked.skips == (1, 2, 4)
        back = Members.split(stacked)
        assert back[:3] == parts[:3]
        assert back[3] == small(skips=(1, 2, 4), member_skips=((),), skip_mode="add")   # no lengths: the stack's, all off
        assert Members.of(stacked) == sum((Members.of(c) for c in parts[1:]), Members.of(parts[0]))
    assert Members.stack([small(mlp_dropout=0.1)]*2).mlp_dropout == 0.1              # compact: once where all agree
    assert Members.stack([small(mlp_dropout=0.1)]*2, explicit=True).mlp_dropout == (0.1, 0.1)

def test_model_configs_go_through_members():
    singles = three_singles(attn_dropout=0.1)
    stacked = GPT.stack(singles)
    assert stacked.config == Members.stack([s.current_config() for s in singles], explicit=True)
    assert [stacked.member(e).config for e in range(3)] == Members.split(stacked.current_config())
    assert stacked.current_config() == Members.of(stacked.config).config(stacked.config, skips=stacked.config.skips, explicit=True)

def test_run_ids_unchanged():
    "The run ids of every paper experiment's runs (hashed under a fixed version) are those before the config split."
    import hashlib
    from dropout_residual import papers, store
    ids = [store.config_hash(s.config, version="pinned") for e in papers.EXPERIMENTS for p in ("smoke", "quick", "paper")
           for s in papers.experiment_runs(e, p, seeds=2)]          # the presets of before (regime came later)
    assert len(ids) == 204
    assert hashlib.sha256(" ".join(ids).encode()).hexdigest()[:16] == "c57575eb758cb296"

def test_stack_rejects_different_shapes():
    with pytest.raises(ValueError, match="different n_embd"): GPT.stack([GPT(small()), GPT(small(n_embd=64))])
    with pytest.raises(ValueError, match="empty"): GPT.stack([])

def test_num_params():
    m = GPT(small(n_members=3))
    C, V, L, T = 32, 65, 4, 16
    per_block = 2*C + 3*C*C + C*C + 4*C*C + 4*C*C             # ln_1 and ln_2 weights, qkv, proj, fc, down (no bias)
    expect = V*C + T*C + L*per_block + C
    assert m.num_params() == expect
    assert m.num_params(per_member=False) == 3*expect
    assert m.num_params(non_embedding=True) == expect - T*C

# ---- dropout -------------------------------------------------------------------------------------
def test_dropout_per_member_and_identity_at_zero():
    torch.manual_seed(0)
    m = GPT(small(n_members=2)).train()
    x = torch.randint(0, 65, (2, 16))
    clean = m(x)[0]
    for site in DROPOUT_SITES:
        m.set_dropout("all", 0.0).set_dropout(site, [0.0, 0.5])
        out = m(x)[0]
        if site == "attn": torch.testing.assert_close(out[0], clean[0], rtol=1e-5, atol=1e-6)  # manual attention path: rounding only
        else: assert torch.equal(out[0], clean[0]), site                                         # member 0 untouched, bit for bit
        assert not torch.allclose(out[1], clean[1]), site
    m.set_dropout("all", 0.0)
    assert torch.equal(m(x)[0], clean)
    m.eval().set_dropout("all", 0.5)
    eval_out = m(x)[0]
    m.set_dropout("all", 0.0)
    assert torch.equal(eval_out, m(x)[0])                     # eval ignores the rates

def test_sdpa_and_manual_attention_agree():
    "At rate 0 the manual attention path (kept on with keep_dropout_paths) and SDPA agree, forward and backward."
    torch.manual_seed(0)
    a, b = GPT(small(n_members=2)), GPT(small(n_members=2))
    b.load_state_dict(a.state_dict())
    b.keep_dropout_paths()
    x, y = torch.randint(0, 65, (2, 2, 16 )), torch.randint(0, 65, (2, 2, 16))
    la, lossa = a(x, y); lb, lossb = b(x, y)
    torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-6)
    lossa.sum().backward(); lossb.sum().backward()
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=lambda m: f"{n}: {m}")

def test_dropout_rate_statistics():
    "The embedding site drops about p of the elements per member and rescales survivors by 1/(1-p)."
    torch.manual_seed(0)
    m = GPT(small(n_members=3, n_layer=1)).train().set_dropout("embd", [0.1, 0.5, 0.9])
    seen = {}
    m.blocks[0].ln_1.register_forward_hook(lambda mod, inp, out: seen.setdefault("x", inp[0]))
    m(torch.randint(0, 65, (64, 16)))
    for e, p in enumerate([0.1, 0.5, 0.9]):
        assert abs((seen["x"][e] == 0).float().mean().item() - p) < 0.02

def test_rates_survive_state_dict():
    m = GPT(small(n_members=2)).set_dropout("mlp", [0.2, 0.0])
    n = GPT(small(n_members=2))
    assert not n._active["mlp"]
    n.load_state_dict(m.state_dict())
    assert n._active["mlp"]
    torch.testing.assert_close(n.dropout_rates()["mlp"], torch.tensor([0.2, 0.0]))

def test_rate_changes_do_not_recompile():
    from torch._dynamo.testing import CompileCounter
    torch._dynamo.reset()
    m = GPT(small(n_layer=2, n_members=2, skips=(1, 2), attn_dropout=0.1, skip_dropout=0.1)).train()
    cnt = CompileCounter()
    cm = torch.compile(m, backend=cnt, fullgraph=True)
    x, y = torch.randint(0, 65, (2, 2, 16)), torch.randint(0, 65, (2, 2, 16))
    for r in (0.1, 0.2, [0.3, 0.05]):
        m.set_dropout("all", r)
        cm(x, y)[1].sum().backward()
    assert cnt.frame_count == 1
    m.keep_dropout_paths()
    m.set_dropout("all", 0.0); cm(x, y)
    m.set_dropout("all", 0.2); cm(x, y)
    assert cnt.frame_count == 2                               # one re-specialisation for keep_dropout_paths, none for 0 <-> 0.2
    torch._dynamo.reset()

def test_bf16_autocast():
    m = GPT(small(n_members=2, attn_dropout=0.1, skip_dropout=0.1, mlp_dropout=0.1)).train()
    x = torch.randint(0, 65, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss = m(x, x)
        out = m.generate(x[:, :4], 20, generator=torch.Generator().manual_seed(0))
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32 and torch.isfinite(loss).all()
    assert out.shape == (2, 2, 24)

# ---- skip topologies -----------------------------------------------------------------------------
def topology_reference(m: GPT, idx: torch.Tensor, member_skips, add: bool) -> torch.Tensor:
    "Logits from the topology equation z_{j+1} = F_j(z_j) + r z_j + sum_k [k | j+1] z_{j+1-k}, blocks used as branches F_j."
    no = {s: None for s in DROPOUT_SITES}
    z = [m.wte(idx[None]) + m.wpe.weight[:, :idx.shape[-1]].unsqueeze(1)]
    for j, block in enumerate(m.blocks):
        out = block(z[j], None, no)                                # F_j(z_j): the block without any residual
        if add: out = out + z[j]
        for k in member_skips:
            if (j + 1) % k == 0: out = out + z[j + 1 - k]
        z.append(out)
    return m._logits(m.ln_f(z[-1]))[0]

@pytest.mark.parametrize("skips,mode", [((1,), "replace"), ((2,), "replace"), ((4,), "replace"), ((1, 2), "replace"),
                                        ((2,), "add"), ((1, 2, 4), "add")])
def test_topology_matches_equation(skips, mode):
    torch.manual_seed(0)
    m = GPT(small(skips=skips, skip_mode=mode)).eval()
    idx = torch.randint(0, 65, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(m(idx)[0][0], topology_reference(m, idx, skips, mode == "add"), rtol=1e-5, atol=1e-5)

def test_replace_mode_is_a_hybrid():
    "In replace mode the block output drops z_j, but the MLP still reads ln_2(z_j + a) (the attention sub-layer's residual)."
    torch.manual_seed(0)
    m = GPT(small(skips=(2,))).eval()
    no = {s: None for s in DROPOUT_SITES}
    with torch.no_grad():
        z = m.wte(torch.randint(0, 65, (1, 2, 8)))
        b = m.blocks[0]
        a = b.attn(b.ln_1(z))
        torch.testing.assert_close(b(z, None, no), a + b.mlp(b.ln_2(z + a)))      # first block of a pair: no carry
        assert not torch.allclose(b(z, None, no), a + b.mlp(b.ln_2(a)))           # not a "pure" replace

def test_skip_dropout_acts_on_the_skip_path():
    "Skip dropout 0.99 in replace mode nearly removes the identity path: output far from the clean one, and random."
    torch.manual_seed(0)
    m = GPT(small(skips=(2,))).train()
    x = torch.randint(0, 65, (2, 16))
    clean = m(x)[0]
    m.set_dropout("skip", 0.99)
    a, b = m(x)[0], m(x)[0]
    assert not torch.allclose(a, clean) and not torch.allclose(a, b)

def test_mixed_gates_equal_single_topologies():
    "set_skip_gates changes topology in place; a member with gates (2,) equals a model built with skips=(2,)."
    torch.manual_seed(0)
    m = GPT(small(n_members=2, skips=(1, 2))).eval()
    m.set_skip_gates(member_skips=[(2,), (1, 2)], skip_mode=["replace", "add"])
    assert m._skip_kind == ["mixed", "all"] and m._resid_kind == "mixed"
    single = GPT(small(skips=(2,)), init=False)
    single.load_state_dict(m.member(0).state_dict())
    x = torch.randint(0, 65, (2, 16))
    torch.testing.assert_close(m(x)[0][0], single.eval()(x)[0][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m(x)[0][1], topology_reference(m.member(1).eval(), x, (1, 2), True), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="not in config.skips"): m.set_skip_gates(member_skips=[(4,), (1,)])

def test_draw_topology_every_mode():
    for cfg in (GPTConfig.paper1(skips=(1, 2, 4), skip_mode="add"), small(skips=(2,), skip_dropout=0.5)):
        fig = draw_topology(cfg)
        assert "skip" in fig.axes[0].get_title()
    fig = draw_topology(GPT(small(n_members=2, skips=(1, 2), member_skips=((1,), (2,))), init=False), member=1)
    assert "skips (2,)" in fig.axes[0].get_title()

# ---- generation ----------------------------------------------------------------------------------
@pytest.mark.parametrize("window", ["exact", "slide"])
def test_generate_cache_equals_no_cache_beyond_block_size(window):
    "Same seed, same samples, with members and a batch, far beyond block_size (the window moves), for both policies."
    torch.manual_seed(0)
    m = GPT(small(n_members=2, skips=(1, 2), member_skips=((1,), (2,)), attn_dropout=0.3)).train()
    start = torch.randint(0, 65, (2, 3, 5))
    kw = dict(max_new_tokens=40, temperature=0.8, top_k=20, window=window)
    a = m.generate(start, use_cache=True, generator=torch.Generator().manual_seed(7), **kw)
    b = m.generate(start, use_cache=False, generator=torch.Generator().manual_seed(7), **kw)
    assert a.shape == (2, 3, 45) and torch.equal(a, b)
    assert torch.equal(a[..., :5], start)
    assert m.training                                          # mode restored
    # each member generates what it generates alone
    c = m.member(1).generate(start[1], generator=torch.Generator().manual_seed(7), **kw)
    assert c.shape == (1, 3, 45)

def test_generate_slide_window_is_a_fresh_half_block():
    "After a slide the model sees the last block_size//2 tokens at positions 0.. (greedy: compare with a plain forward)."
    torch.manual_seed(0)
    m = GPT(small()).eval()                                    # block_size=16: slides at 17 tokens, keeps 8
    start = torch.randint(0, 65, (1, 16))                       # a full window
    out = m.generate(start, 3, temperature=0, window="slide")[0]   # (B, 19)
    assert torch.equal(out[:, 16], m(start)[0][0, :, -1].argmax(-1))         # the full window
    assert torch.equal(out[:, 17], m(out[:, 9:17])[0][0, :, -1].argmax(-1))  # slid: the last 8 tokens
    assert torch.equal(out[:, 18], m(out[:, 9:18])[0][0, :, -1].argmax(-1))  # then cached, growing
    assert torch.equal(out, m.generate(start, 3, temperature=0, window="slide", use_cache=False)[0])
    with pytest.raises(ValueError, match="window='ring'"): m.generate(start, 3, window="ring")

def test_cached_logits_equal_full_forward():
    torch.manual_seed(0)
    m = GPT(small(n_members=2)).eval()
    seq = torch.randint(0, 65, (2, 2, 16))
    full = m(seq)[0]                                           # (E, B, T, V)
    from dropout_residual.layers import LayerKV
    kv = [LayerKV(16) for _ in m.blocks]
    with torch.no_grad():
        step = [m._logits(m._hidden(seq[..., :6], kv, 0))]     # prefill 6 tokens, then one at a time
        for t in range(6, 16): step.append(m._logits(m._hidden(seq[..., t:t + 1], kv, t)))
    torch.testing.assert_close(torch.cat(step, dim=2), full, rtol=1e-5, atol=1e-5)

def test_generate_crops_long_prompt_and_greedy():
    torch.manual_seed(0)
    m = GPT(small())
    long = torch.randint(0, 65, (1, 40))                       # longer than block_size=16
    out = m.generate(long, 5, temperature=0)
    assert out.shape == (1, 1, 21) and torch.equal(out[0, :, :16], long[:, -16:])
    assert torch.equal(out, m.generate(long, 5, temperature=0, use_cache=False))

# ---- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kw,msg", [
    (dict(n_embd=30, n_head=4), "n_head=4 must divide n_embd=30"),
    (dict(skips=(3,)), r"skip length k=3 must divide n_layer=4 \(choose from \[1, 2, 4\]\)"),
    (dict(skips=()), "skips=\\(\\) is empty"),
    (dict(attn_dropout=1.0), r"attn_dropout=1.0 must lie in \[0, 1\)"),
    (dict(skip_dropout=-0.5), "skip_dropout=-0.5"),
    (dict(n_members=2, mlp_dropout=(0.1, 0.2, 0.3)), "n_members=2"),
    (dict(skip_mode="both"), "skip_mode='both'"),
    (dict(n_layer=0), "n_layer=0 must be an integer >= 1"),
    (dict(skips=(2,), member_skips=((1,),)), r"uses lengths \[1\] not in skips=\(2,\)"),
    (dict(member_skips=((),)), "no residual path"),
])
def test_bad_config(kw, msg):
    with pytest.raises(ValueError, match=msg): small(**kw)

def test_bad_idx():
    m = GPT(small(n_members=2))
    with pytest.raises(ValueError, match="T=17 tokens, more than block_size=16"): m(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match=r"token id 65, outside the vocabulary \[0, vocab_size=65\)"): m(torch.full((1, 4), 65))
    with pytest.raises(ValueError, match="token id -3"): m(torch.full((1, 4), -3))
    with pytest.raises(ValueError, match=r"shape \(3, 1, 4\); expected \(B, T\) shared by all members or \(E=2, B, T\)"):
        m(torch.zeros(3, 1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="shape \\(4,\\)"): m(torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="integer tensor"): m(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="targets has shape"): m(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="token id 99"): m.generate(torch.full((1, 4), 99), 3)
    with pytest.raises(ValueError, match="temperature=-1"): m.generate(torch.zeros(1, 4, dtype=torch.long), 3, temperature=-1)
    with pytest.raises(ValueError, match="top_k=0"): m.generate(torch.zeros(1, 4, dtype=torch.long), 3, top_k=0)
    with pytest.raises(ValueError, match="rates for site='attn' has 3 values"): m.set_dropout("attn", [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"dropout rate 1.5 for site='mlp' must lie in \[0, 1\)"): m.set_dropout("mlp", 1.5)
    with pytest.raises(ValueError, match="member i=5 out of range"): m.member(5)

def test_bf16_autocast_on_cpu_trains_like_float32():
    "bf16 autocast on a CPU (its attention in float32, `model._attend`): 100 steps give float32's losses to bf16 tolerance."
    from dropout_residual import train as T
    from dropout_residual.config import TrainConfig
    from dropout_residual.data import shakespeare
    ds, m = shakespeare(download=False), GPTConfig.smoke(n_layer=2, n_head=2, n_embd=64, block_size=64)
    t = dict(max_iters=100, batch_size=8, block_size=64, warmup_iters=10, eval_interval=100, eval_iters=4, log_interval=1,
             ckpt_interval=None, device="cpu", seed=[5])
    a, b = (T.train(m, TrainConfig.smoke(**t, dtype=d), ds).history.dropna(subset=["train_loss"]).train_loss.to_numpy()
            for d in ("float32", "bfloat16"))
    assert len(a) == len(b) == 100 and np.isfinite(b).all()
    assert np.abs(a - b).max() / a.min() < 0.05            # step by step
    assert abs(a[-20:].mean() - b[-20:].mean()) < 0.02     # where the run ends
