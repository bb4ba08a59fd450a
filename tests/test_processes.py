"""The `processes` executor end to end, from the command line: a sweep trained by two worker processes gets SIGTERM
midway (each worker saves a checkpoint at its step boundary, the command exits 143), the same command resumes, and it
ends with exactly the numbers of an uninterrupted sweep."""
import os, signal, subprocess, sys, time
from pathlib import Path

import pandas as pd

from dropout_residual.checkpoint import load_checkpoint

LABELS = ["fixed", "linear", "cosine"]
ARGS = ["sweep", "paper2", "--preset", "smoke", *[a for l in LABELS for a in ("--label", l)], "--set", "max_iters=2000",
        "--set", "eval_interval=500", "--set", "ckpt_interval=100", "--device", "cpu", "--executor", "processes", "--workers", "2", "--quiet"]
CLI = [sys.executable, "-c", "import sys; from dropout_residual.cli import main; sys.exit(main())"]
COLS = ["label", "seed", "run_id", "done", "best_val_loss", "final_train_loss", "final_val_loss", "best_val_step", "iters"]

def sweep(root: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen(CLI + ARGS + ["--runs", str(root)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)

def runs(root: Path) -> pd.DataFrame:
    from dropout_residual.store import load_runs
    return load_runs(root, "paper2").sort_values("label").reset_index(drop=True)[COLS]

def test_sigterm_stops_every_worker_at_a_checkpoint_and_the_command_resumes(tmp_path):
    ref = sweep(tmp_path/"ref")
    out, err = ref.communicate(timeout=600)
    assert ref.returncode == 0, err[-2000:]
    root = tmp_path/"stopped"
    p = sweep(root)
    deadline = time.time() + 300
    while not list((root/"paper2"/"_groups").glob("*/ckpt.pt")):     # both workers are past their first checkpoint
        assert p.poll() is None and time.time() < deadline, "the sweep ended (or hung) before its first checkpoint"
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 143 and "interrupted" in err, f"rc={p.returncode}: {err[-2000:]}"
    kinds = [load_checkpoint(c)["kind"] for c in (root/"paper2"/"_groups").glob("*/ckpt.pt")]
    assert "interrupt" in kinds, kinds                                 # a worker stopped at a step boundary and said where
    assert len(runs(root).query("done == True")) < len(LABELS)
    again = sweep(root)
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-2000:]
    pd.testing.assert_frame_equal(runs(root), runs(tmp_path/"ref"), check_exact=True)
