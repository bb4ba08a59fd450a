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
    # alone (E=1) the matmuls take F.linear instead of bmm, so only rounding differs: the masks are the same ones
    wo, ho = _member(_run(ds, [11], 0.2), 0)
    for k in wa: torch.testing.assert_close(wo[k], wg[k], rtol=0, atol=1e-6)
    pd.testing.assert_frame_equal(ho, hg, rtol=1e-5)
