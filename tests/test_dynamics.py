"Learning dynamics end to end: metrics against reference formulas, run folders, bad input, GPT-NeoX (Pythia) layout."
import json, sys
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import numpy as np
import pandas as pd
import pytest, torch

from dropout_residual import dynamics as D
from dropout_residual import viz as VZ
from dropout_residual.data import shakespeare
from dropout_residual.config import GPTConfig
from dropout_residual.model import GPT

# ---- metrics against the textbook formulas ------------------------------------------------------

def _hsic_biased(K, L):
    n = K.shape[0]
    H = np.eye(n) - np.ones((n, n))/n
    return np.trace(K @ H @ L @ H)

def _hsic_unbiased(K, L):
    "Song et al. (2012), eq. 5, written out literally."
    n = K.shape[0]
    K, L = K.copy(), L.copy()
    np.fill_diagonal(K, 0); np.fill_diagonal(L, 0)
    one = np.ones(n)
    return (np.trace(K @ L) + (one @ K @ one)*(one @ L @ one)/((n - 1)*(n - 2)) - 2/(n - 2)*(one @ K @ L @ one))/(n*(n - 3))

@pytest.mark.parametrize("n,p,q", [(6, 3, 5), (40, 10, 4), (12, 50, 30)])
def test_cka_matches_gram_formulas(n, p, q):
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, p)); y = x[:, :1] @ rng.normal(size=(1, q)) + rng.normal(size=(n, q))
    K, L = x @ x.T, y @ y.T
    for deb, hsic in ((False, _hsic_biased), (True, _hsic_unbiased)):
        ref = hsic(K, L)/np.sqrt(hsic(K, K)*hsic(L, L))
        assert D.linear_cka(torch.tensor(x), torch.tensor(y), debiased=deb) == pytest.approx(ref, rel=1e-9, abs=1e-12)

def test_cka_float32_input_is_computed_in_float64():
    g = torch.Generator().manual_seed(0)
    x = 1e4 + torch.randn(256, 64, generator=g)          # a large offset: float32 centring loses digits
    assert D.linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert D.linear_cka(x.double(), x.double()[:, torch.randperm(64, generator=g)]) == pytest.approx(1.0, abs=1e-12)

def test_per_and_condition_number():
    s = torch.tensor([4., 2., 1., 1.], dtype=torch.float64)
    p = s/s.sum()
    ref = float(torch.exp(-(p*p.log()).sum())/4)
    q, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))
    w = q @ torch.diag(s.double()) @ q.T
    assert D.proportional_effective_rank(w) == pytest.approx(ref, rel=1e-10)
    assert D.condition_number(w) == pytest.approx(4.0, rel=1e-10)
    assert D.frobenius_norm(w) == pytest.approx(float(s.pow(2).sum().sqrt()), rel=1e-10)
    assert D.proportional_effective_rank(torch.eye(50)) == pytest.approx(1.0)
    assert D.proportional_effective_rank(torch.ones(10, 3)) == pytest.approx(1/3)

# ---- a run folder built by hand in the trainer's layout ------------------------------------------

def _make_run(root: Path, n_embd=32, steps=(0, 1, 2, 4, 8), seed=0, name="run") -> tuple[Path, GPTConfig]:
    "A few AdamW steps of a tiny 2-member model on Tiny Shakespeare, analysis checkpoints as train writes them."
    data = shakespeare(download=False)
    cfg = GPTConfig.smoke(n_members=2, vocab_size=data.vocab_size, block_size=16, n_embd=n_embd, n_layer=2)
    torch.manual_seed(seed)
    m = GPT(cfg, seeds=[seed, seed + 1])
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    run = root/name
    (run/"analysis").mkdir(parents=True)
    (run/"config.json").write_text(json.dumps({"model": cfg.to_dict(), "train": {"max_iters": max(steps), "block_size": 16}}))
    gens = [torch.Generator().manual_seed(s) for s in (seed, seed + 1)]
    for it in range(max(steps) + 1):
        if it in steps:
            torch.save({"model": m.state_dict(), "step": it, "model_config": cfg.to_dict()}, run/"analysis"/f"step_{it:07d}.pt")
        if it == max(steps): break
        x, y = data.get_batch("train", 8, 16, generator=gens)
        loss = m(x, y)[1].sum()
        opt.zero_grad(); loss.backward(); opt.step()
    return run, cfg

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return _make_run(tmp_path_factory.mktemp("runs"))

@pytest.fixture(scope="module")
def table(run):
    return D.convergence(run[0], n_probe=8, progress=False)

def test_convergence_table(run, table):
    run_dir, cfg = run
    assert list(table.columns) == D.CKA_COLUMNS
    assert set(table.member) == {0, 1} and set(table.layer) == {0, 1}
    assert set(table.component) == {"attn", "ov", "mlp"}
    assert sorted(table.step.unique()) == [0, 1, 2, 4, 8]
    final = table[table.step == 8]
    assert np.allclose(final.cka_to_final, 1.0) and np.allclose(final.frac, 1.0)
    assert table.cka_to_final.between(-1e-9, 1 + 1e-9).all()
    assert table.per_weight.between(0, 1).all() and table.per_grad.between(0, 1).all()
    assert table[["norm_weight", "norm_grad", "cond_weight"]].notna().all().all()
    assert (table[table.component == "ov"]["head"] >= 0).all() and (table[table.component != "ov"]["head"] == -1).all()
    # training moves the activations: CKA to final at step 0 is below 1 somewhere
    assert table[table.step == 0].cka_to_final.min() < 0.99
    # the probe was stored with the run and is reused
    probe = D.load_probe(run_dir, 16)
    assert probe.shape == (8, 17)
    again = D.convergence(run_dir, progress=False, grads=False)
    pd.testing.assert_series_equal(again.cka_to_final, table.cka_to_final)

def test_members_are_independent(run, table):
    "Member 1 of the stack analysed alone (as a one-member run) gives the same numbers."
    run_dir, cfg = run
    m = GPT(cfg, init=False)
    probe = D.load_probe(run_dir, 16)
    loads = []
    for s, p in D.analysis_checkpoints(run_dir).items():
        if s not in (0, 8): continue
        def load(p=p):
            D.load_analysis_state(m, p)
            return m.member(1)
        loads.append((s, load))
    single = D.analyse_checkpoints(loads, probe, name=run_dir.name, total_steps=8, progress=False)
    a = table[(table.member == 1) & table.step.isin([0, 8])].reset_index(drop=True)
    for col in ("cka_to_final", "per_weight", "per_grad", "norm_weight"):
        np.testing.assert_allclose(single[col].to_numpy(), a[col].to_numpy(), rtol=1e-4, atol=1e-6)

def test_settling_and_plots(run, table):
    s = D.settling_steps(table, threshold=0.9)
    assert len(s) == 2*2*3  # members x layers x components (heads averaged)
    assert s.settle_frac.between(0, 1).all()
    assert set(D.settling_steps(table, by_head=True)["head"]) == {-1, 0, 1}
    two = pd.concat([table, table.assign(model="other")])
    for fig in (VZ.plot_cka_heatmap(table), VZ.plot_settling(two), VZ.plot_per_vs_cka(two)):
        assert isinstance(fig, matplotlib.figure.Figure)
        matplotlib.pyplot.close(fig)

def test_tokens_all(run):
    df = D.convergence(run[0], tokens="all", grads=False, progress=False)
    assert np.allclose(df[df.step == 8].cka_to_final, 1.0)

# ---- bad input ----------------------------------------------------------------------------------

def test_no_analysis_checkpoints(tmp_path):
    (tmp_path/"r").mkdir()
    with pytest.raises(FileNotFoundError, match="analysis_ckpts='log'"): D.convergence(tmp_path/"r")

def test_mismatched_checkpoints(tmp_path, run):
    small = GPTConfig.smoke(n_members=2, vocab_size=65, block_size=16, n_embd=16, n_layer=2)
    bad = tmp_path/"mixed"; (bad/"analysis").mkdir(parents=True)
    for f in D.analysis_checkpoints(run[0]).values(): (bad/"analysis"/f.name).write_bytes(f.read_bytes())
    torch.save({"model": GPT(small).state_dict(), "step": 3, "model_config": small.to_dict()}, bad/"analysis"/"step_0000003.pt")
    with pytest.raises(ValueError, match=r"step_0000003\.pt does not match the model: .* has shape"):
        D.convergence(bad, n_probe=8, progress=False, grads=False)

def test_corrupt_checkpoint_and_other_vocabulary(tmp_path, run):
    d = tmp_path/"r"; (d/"analysis").mkdir(parents=True)
    for f in D.analysis_checkpoints(run[0]).values(): (d/"analysis"/f.name).write_bytes(f.read_bytes()[:200])
    with pytest.raises(ValueError, match="cannot be read"): D.convergence(d, model=GPT(run[1]), progress=False)
    e = tmp_path/"e"; (e/"analysis").mkdir(parents=True)
    for f in D.analysis_checkpoints(run[0]).values(): (e/"analysis"/f.name).write_bytes(f.read_bytes())
    (e/"tokenizer.json").write_text(json.dumps({"kind": "char", "chars": list("abc")}))
    with pytest.raises(ValueError, match="trained on another corpus"): D.convergence(e, progress=False)

def test_corrupt_run_config_is_named(tmp_path, run):
    d = tmp_path/"r"; (d/"analysis").mkdir(parents=True)
    for f in D.analysis_checkpoints(run[0]).values(): (d/"analysis"/f.name).write_bytes(f.read_bytes())
    (d/"config.json").write_text('{"model": {"n_layer": 2')  # cut short
    with pytest.raises(ValueError, match="config.json is corrupt"): D.convergence(d, progress=False)

def test_probe_shorter_than_block(tmp_path, run):
    d = tmp_path/"r"; (d/"analysis").mkdir(parents=True)
    for f in D.analysis_checkpoints(run[0]).values(): (d/"analysis"/f.name).write_bytes(f.read_bytes())
    D.save_probe(d, torch.zeros(8, 9, dtype=torch.long))
    with pytest.raises(ValueError, match=r"make_probe\(data, n=8, block_size=16\)"): D.convergence(d, progress=False)
    with pytest.raises(ValueError, match="shorter than block_size"):
        D.convergence(run[0], probe=torch.zeros(8, 5, dtype=torch.long), progress=False)

# ---- GPT-NeoX (Pythia) --------------------------------------------------------------------------

transformers = pytest.importorskip("transformers")
import transformers.models.gpt_neox.modeling_gpt_neox as neox_mod

def _neox(seed=0, hidden=32, heads=4):
    cfg = transformers.GPTNeoXConfig(vocab_size=50, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=heads,
                                     intermediate_size=4*hidden, max_position_embeddings=64, attn_implementation="eager")
    torch.manual_seed(seed)
    return transformers.GPTNeoXForCausalLM(cfg).eval()

def test_neox_value_vectors_match_the_models_own(monkeypatch):
    "The values we slice out of the fused query_key_value are the ones the attention uses."
    m = _neox()
    lay = D.layout_for(m)
    assert isinstance(lay, D.NeoXLayout)
    seen, mine = [], []
    spy_ok = hasattr(neox_mod, "eager_attention_forward")       # transformers >= 4.48; older versions: weights check only
    if spy_ok:
        orig = neox_mod.eager_attention_forward
        def spy(module, q, k, v, *a, **kw):
            seen.append(v.detach().clone()); return orig(module, q, k, v, *a, **kw)
        monkeypatch.setattr(neox_mod, "eager_attention_forward", spy)
    probe = torch.randint(0, 50, (6, 10), generator=torch.Generator().manual_seed(1))
    with D.forward_hooks([(lay.qkv_module(i), lambda mod, i, o: mine.append(lay.values(o))) for i in range(2)]):
        with torch.no_grad(): m(input_ids=probe)
    assert all(not mod._forward_hooks for mod in m.modules())  # no hooks left
    mine0 = mine[0][0].transpose(1, 2)                           # (1, B, T, H, d_h) -> (B, H, T, d_h)
    if spy_ok:
        assert len(seen) == 2
        for s, v in zip(seen, mine): torch.testing.assert_close(v[0].transpose(1, 2), s)   # s: (B, H, T, d_h)
    # the value weights: x @ W_v[h].T + b_v[h] reproduces the values of layer 0
    qkv = m.gpt_neox.layers[0].attention.query_key_value
    W = lay.matrices(0)["v"][0]                                   # (H, d_h, C)
    b = qkv.bias.unflatten(0, (4, 3, 8))[:, 2]                    # (H, d_h)
    with torch.no_grad():
        x = m.gpt_neox.layers[0].input_layernorm(m.gpt_neox.embed_in(probe))
        torch.testing.assert_close(torch.einsum("btc,hdc->bhtd", x, W) + b[None, :, None], mine0, atol=1e-5, rtol=1e-5)
        # a naive split (the last third of the fused output) would be wrong
        naive = qkv(x)[..., 64:].unflatten(-1, (4, 8)).transpose(1, 2)
    assert not torch.allclose(naive, mine0, atol=1e-3)

def test_neox_gradients_and_ov():
    m = _neox()
    probe = torch.randint(0, 50, (8, 12), generator=torch.Generator().manual_seed(2))
    g = D.capture_gradients(m, probe, n_batches=2)
    m.zero_grad(); m(input_ids=probe, labels=probe).loss.backward()
    qg = m.gpt_neox.layers[1].attention.query_key_value.weight.grad
    torch.testing.assert_close(g[1]["v"][0].float(), qg.unflatten(0, (4, 3, 8))[:, 2], atol=1e-5, rtol=1e-4)
    acts = D.capture_activations(m, probe)
    assert acts[(0, "ov", 3)].shape == (1, 8, 32) and acts[(1, "mlp", -1)].shape == (1, 8, 32)

def test_pythia_convergence_on_revisions(tmp_path):
    m = _neox()
    for s in (0, 10, 100):
        with torch.no_grad():
            for p in m.parameters(): p.add_(0.05*torch.randn_like(p))
        m.save_pretrained(tmp_path/f"step{s}")
    probe = torch.randint(0, 50, (16, 12), generator=torch.Generator().manual_seed(3))
    df = D.pythia_convergence(tmp_path, ["step0", "step10", "step100"], probe, name="tiny-neox", progress=False)
    assert list(df.columns) == D.CKA_COLUMNS
    assert sorted(df.step.unique()) == [0, 10, 100] and set(df.member) == {0}
    assert np.allclose(df[df.step == 100].cka_to_final, 1.0)
    assert df.frac.max() == 1.0 and df[df.step == 10].frac.iloc[0] == pytest.approx(0.1)
    assert len(D.settling_steps(df)) == 2*3
    # a revision of another width is refused
    _neox(hidden=48).save_pretrained(tmp_path/"step200")
    with pytest.raises(ValueError, match="do not share one architecture"):
        D.pythia_convergence(tmp_path, ["step0", "step200"], probe, progress=False, grads=False)
    with pytest.raises(FileNotFoundError, match="not available locally"):
        D.pythia_convergence(tmp_path, ["step0", "step999"], probe, progress=False, grads=False)

def test_missing_transformers_is_explained(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"dropout_residual\[pythia\]"): D.require_transformers()
