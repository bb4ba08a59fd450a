"""Reliability round 2, part B: results that were silently wrong (booleans from `--set`, sweep options dropped, two sweeps
planning the same runs, a NaN named by its group index) and failures that end in one line naming their cause (file
system errors, Ctrl-C, malformed environment variables, an absent device). Each test asserts the exact outcome: the
message fragment, the exit code, and the files left as they were."""
import errno, json, os, re, subprocess, sys, time
from pathlib import Path

import pytest
import torch

from fixtures import CLIError, cli, run_copy, tiny_configs, tiny_data, write

HERE = Path(__file__).resolve().parent
BOOL_WORDS = {"true": True, "TRUE": True, "1": True, "yes": True, "Yes": True, "on": True, "ON": True,
              "false": False, "False": False, "0": False, "no": False, "NO": False, "off": False, "Off": False}

def one_line_error(e: CLIError) -> str:
    "The stderr of a failed command: exactly one line, no traceback."
    lines = e.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in e.stderr, e.stderr
    return lines[0]

# ---------------------------------------------------------------- 1. booleans and types from --set
@pytest.mark.parametrize("word", BOOL_WORDS)
def test_every_boolean_word_parses(word):
    from dropout_residual.config import GPTConfig, TrainConfig, apply_overrides
    m, t = apply_overrides(GPTConfig(), TrainConfig(), [f"decay_lr={word}", f"bias={word}", f"train.compile={word}"])
    assert (t.decay_lr, m.bias, t.compile) == (BOOL_WORDS[word],) * 3

@pytest.mark.parametrize("bad", ["maybe", "2", "-1", "0.5", "", "[1]"])
def test_other_boolean_values_are_refused(bad):
    from dropout_residual.config import GPTConfig, TrainConfig, apply_overrides
    with pytest.raises(ValueError, match=re.escape("decay_lr=") + ".*must be a boolean"):
        apply_overrides(GPTConfig(), TrainConfig(), [f"decay_lr={bad}"])

def test_bias_no_trains_a_model_without_biases(tmp_path):
    "The bug: `--set bias=no` stored the truthy string 'no' and built a model with biases."
    cli("train", "--preset", "smoke", "--set", "bias=no", "--set", "decay_lr=off", "--set", "max_iters=2", "--set", "warmup_iters=1",
        "--device", "cpu", "--out", str(tmp_path/"r"), "--quiet")
    cfg = json.loads((tmp_path/"r"/"config.json").read_text())
    assert cfg["model"]["bias"] is False and cfg["train"]["decay_lr"] is False
    from dropout_residual.checkpoint import load_run
    model = load_run(tmp_path/"r")[0]
    assert not [n for n, _ in model.named_parameters() if n.endswith("bias")]

@pytest.mark.parametrize("key", ["max_iters", "n_layer", "lr", "attn_dropout"])
def test_text_for_a_number_field_names_the_field(key, tmp_path):
    with pytest.raises(CLIError) as e: cli("train", "--preset", "smoke", "--set", f"{key}=abc", "--out", str(tmp_path/"r"))
    assert e.value.code == 2 and f"{key}='abc'" in one_line_error(e.value)
    assert not (tmp_path/"r").exists()

# ---------------------------------------------------------------- 2. options outside a run's identity reach the sweep
def test_sweep_options_reach_the_training(tmp_path, monkeypatch):
    "`--set ckpt_interval=2` (not in the run id) is what the group trains with, not the default rebuilt from run.json."
    import dropout_residual.sweep as SW
    seen = []
    def spy(model_cfg, train_cfg, *a, **k):
        seen.append(train_cfg); return real(model_cfg, train_cfg, *a, **k)
    real = SW.train
    monkeypatch.setattr(SW, "train", spy)
    cli("sweep", "paper2", "--label", "fixed", "--set", "max_iters=4", "--set", "ckpt_interval=2",
        "--set", "compile=off", "--runs", str(tmp_path), "--device", "cpu", "--executor", "local", "--quiet")   # the spy sees this process
    assert [(t.ckpt_interval, t.compile) for t in seen] == [(2, False)]
    plain = SW.experiment_runs("paper2", "smoke", overrides=["max_iters=4"], labels=["fixed"])[0]
    assert (tmp_path/"paper2"/plain.run_id/"summary.json").is_file()   # same run id as without the options
    class Seen(Exception): pass
    def spy_only(model_cfg, train_cfg, *a, **k): seen.append(train_cfg); raise Seen
    monkeypatch.setattr(SW, "train", spy_only)
    with pytest.raises(Seen):     # compile=on is in the run's identity (a compiled run is another run) and reaches its training
        SW.sweep("paper2", overrides=["max_iters=4", "compile=on"], labels=["fixed"], root=tmp_path, device="cpu", progress=False)
    assert seen[-1].compile is True

# ---------------------------------------------------------------- 4. planning under a lock on the results root
def _has_open(pid: int, name: str) -> bool:
    try: return any(os.readlink(f"/proc/{pid}/fd/{fd}").endswith(name) for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError: return False

@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to see the other process wait")
def test_a_second_sweep_waits_for_the_planning_lock(tmp_path):
    "Two processes: while this one holds the root's planning lock, a sweep started beside it plans nothing."
    from dropout_residual.sweep import plan_lock
    env = {**os.environ, "PYTHONPATH": str(HERE.parent), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", "import sys; from dropout_residual.cli import main; sys.exit(main(sys.argv[1:]))", "sweep", "paper2", "--label", "fixed", "--set", "max_iters=2",
           "--runs", str(tmp_path), "--device", "cpu", "--quiet"]
    with plan_lock(tmp_path):
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        t0 = time.time()
        while not _has_open(p.pid, ".plan.lock") and p.poll() is None and time.time() - t0 < 120: time.sleep(0.2)
        time.sleep(1.0)
        assert p.poll() is None, p.communicate()
        assert not list((tmp_path/"paper2").glob("*/run.json")) if (tmp_path/"paper2").exists() else True
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert len(list((tmp_path/"paper2").glob("*/summary.json"))) == 1

def test_planning_happens_inside_the_lock(tmp_path, monkeypatch):
    "`prepare_run` and `plan_groups` both run while the root's planning lock is held."
    import fcntl
    import dropout_residual.sweep as SW
    held = []
    def probe(*a, **k):
        with open(tmp_path/".plan.lock") as f:
            try: fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB); held.append(False); fcntl.flock(f, fcntl.LOCK_UN)
            except BlockingIOError: held.append(True)
        raise KeyboardInterrupt
    monkeypatch.setattr(SW, "plan_groups", probe)
    with pytest.raises(KeyboardInterrupt): SW.sweep("paper2", root=tmp_path, labels=["fixed"], device="cpu", progress=False)
    assert held == [True]

# ---------------------------------------------------------------- 5. a NaN in a stacked sweep names the run
def test_nan_in_a_stacked_sweep_names_the_run(tmp_path):
    from dropout_residual.papers import experiment_runs
    from dropout_residual.sweep import sweep
    from dropout_residual.train import NonFiniteLossError
    over = {"lr": 1e30, "min_lr": 1e30, "warmup_iters": 0, "max_iters": 4}
    with pytest.raises(NonFiniteLossError) as e:
        sweep("paper2", root=tmp_path, labels=["fixed", "linear"], overrides=over, device="cpu", progress=False)
    specs = {s.label: s for s in experiment_runs("paper2", "smoke", overrides=over, labels=["fixed", "linear"])}
    m = re.search(r"run '(\w+)' seed (\d+) \(run id ([0-9a-f]{16}), member \d of group", str(e.value))
    assert m, str(e.value)
    label, seed, rid = m.groups()
    assert (int(seed), rid) == (specs[label].seed, specs[label].run_id)
    assert not str(e.value).startswith("member ")

# ---------------------------------------------------------------- 6. file-system errors: one line, path, cause, fix
def test_disk_full_during_train_names_the_file_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    "The disk fills up after the first checkpoint: the error names the file it was writing; that checkpoint still loads."
    from dropout_residual.checkpoint import load_checkpoint
    from dropout_residual.train import train
    out, real = tmp_path/"run", os.fsync
    def full(fd):
        if (out/"ckpt.pt").exists(): raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as e: train(*tiny_configs(), data=tiny_data(), out_dir=out, progress=False)
    assert e.value.errno == errno.ENOSPC and str(out) in str(e.value.filename)   # the write names its file
    monkeypatch.setattr(os, "fsync", real)
    assert 0 < load_checkpoint(out/"ckpt.pt")["step"] < 8                        # the last good checkpoint is intact
    assert not list(out.glob(".*.tmp"))

def test_disk_full_in_the_command_line(tmp_path, monkeypatch):
    def full(fd): raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(CLIError) as e:
        cli("train", "--preset", "smoke", "--set", "max_iters=2", "--device", "cpu", "--out", str(tmp_path/"r"), "--quiet")
    line = one_line_error(e.value)
    assert e.value.code == 74 and str(tmp_path/"r") in line and "No space left on device" in line and "free some disk space" in line

def test_read_only_folder_in_sweep_and_reproduce(tmp_path, monkeypatch):
    "A read-only file system (simulated: the tests run as root, so chmod would not stop a write)."
    import tempfile
    real = tempfile.mkstemp
    def ro(*a, dir=None, **k):
        if dir is not None and str(tmp_path) in str(dir): raise OSError(errno.EROFS, "Read-only file system", str(dir))
        return real(*a, dir=dir, **k)
    monkeypatch.setattr(tempfile, "mkstemp", ro)
    for argv in (["sweep", "paper2", "--label", "fixed"], ["reproduce", "--preset", "smoke", "--seeds", "1", "--experiments", "paper2"]):
        with pytest.raises(CLIError) as e: cli(*argv, "--runs", str(tmp_path/"runs"), "--device", "cpu", "--quiet")
        line = one_line_error(e.value)
        assert e.value.code == 74 and str(tmp_path/"runs") in line and "read-only" in line, line

def test_a_cache_folder_that_is_a_file(tmp_path, monkeypatch):
    monkeypatch.setenv("DROPOUT_RESIDUAL_CACHE", str(write(tmp_path/"cache", "x")))
    with pytest.raises(CLIError) as e:   # the corpus is found, its token cache cannot be written
        cli("train", "--preset", "smoke", "--set", "max_iters=2", "--out", str(tmp_path/"r"), "--quiet")
    assert e.value.code == 2 and f"the cache folder {tmp_path/'cache'} is a file" in one_line_error(e.value)
    monkeypatch.delenv("DROPOUT_RESIDUAL_DATA", raising=False)
    with pytest.raises(CLIError) as e: cli("data", "--offline")
    assert e.value.code == 2 and f"the cache folder {tmp_path/'cache'} is a file" in one_line_error(e.value)

def test_ctrl_c_in_sweep_and_reproduce_is_one_line(tmp_path, monkeypatch):
    import dropout_residual.report as R
    import dropout_residual.sweep as SW
    def interrupted(*a, **k): raise KeyboardInterrupt
    monkeypatch.setattr(SW, "sweep", interrupted); monkeypatch.setattr(R, "reproduce", interrupted)
    for cmd in (["sweep", "paper2"], ["reproduce"]):
        with pytest.raises(CLIError) as e: cli(*cmd, "--runs", str(tmp_path), "--quiet")
        line = one_line_error(e.value)
        assert e.value.code == 130 and "interrupted; run the same command again to resume" in line

# ---------------------------------------------------------------- 6. environment and devices
@pytest.mark.parametrize("var,argv", [("WORLD_SIZE", ["train", "--preset", "smoke"]), ("RANK", ["train", "--preset", "smoke"]),
                                      ("DROPOUT_RESIDUAL_GROUP_BYTES", ["sweep", "paper2", "--device", "cpu"])])
def test_malformed_environment_variables_are_named(var, argv, tmp_path, monkeypatch):
    monkeypatch.setenv(var, "abc")
    if var == "RANK": monkeypatch.setenv("WORLD_SIZE", "1")
    where = ["--out", str(tmp_path/"r")] if argv[0] == "train" else ["--runs", str(tmp_path)]
    with pytest.raises(CLIError) as e: cli(*argv, *where, "--quiet")
    assert e.value.code == 2 and f"{var}='abc'" in one_line_error(e.value)

def test_sweep_on_cuda_without_cuda(tmp_path, monkeypatch):
    "Was an AssertionError from torch.cuda.mem_get_info."
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(CLIError) as e: cli("sweep", "paper2", "--device", "cuda", "--runs", str(tmp_path), "--quiet")
    assert e.value.code == 2 and "CUDA is not available" in one_line_error(e.value)
    from dropout_residual.sweep import max_group_size
    from dropout_residual.config import GPTConfig, TrainConfig
    with pytest.raises(ValueError, match="CUDA is not available"): max_group_size(GPTConfig.smoke(), TrainConfig.smoke(), "cuda")

# ---------------------------------------------------------------- 7. honest messages
def test_a_wrong_data_file_is_not_told_to_be_deleted(tmp_path, monkeypatch):
    other = write(tmp_path/"passwd", "root:x:0:0:root:/root:/bin/bash\n")
    monkeypatch.setenv("DROPOUT_RESIDUAL_DATA", str(other))
    with pytest.raises(CLIError) as e: cli("data", "--offline")
    line = one_line_error(e.value)
    assert e.value.code == 2 and str(other) in line and "Re-point $DROPOUT_RESIDUAL_DATA" in line
    assert "delete" not in line.lower() and other.read_text().startswith("root:")

def test_a_one_character_corpus_suggests_no_negative_block_size(tmp_path):
    with pytest.raises(CLIError) as e:
        cli("train", "--preset", "smoke", "--corpus", str(write(tmp_path/"a.txt", "a")), "--out", str(tmp_path/"r"), "--quiet")
    line = one_line_error(e.value)
    assert e.value.code == 2 and "<= -1" not in line and "<= 0" not in line, line

def test_set_out_dir_and_empty_out_write_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for argv in (["--out", ""], ["--set", f"out_dir={tmp_path}/x", "--out", str(tmp_path/"y")], ["--set", "train.out_dir=z"]):
        with pytest.raises(CLIError) as e: cli("train", "--preset", "smoke", *argv, "--quiet")
        assert e.value.code == 2, e.value
    assert sorted(os.listdir(tmp_path)) == []
