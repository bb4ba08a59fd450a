"The benchmarks end to end through the command line, at tiny sizes: each prints a table and, last, one JSON line."
import contextlib, io, json, os, subprocess, sys

import torch

from dropout_residual.cli import main

CLI = [sys.executable, "-c", "import sys; from dropout_residual.cli import main; sys.exit(main())"]
FAST = ["--threads", "1", "--device", "cpu"]  # one thread: on a loaded shared CPU two spin-waiting threads are far slower

def run_cli(*args, check=True):
    p = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, env={**os.environ, "IN_TEST": "1"})
    if check: assert p.returncode == 0, p.stderr[-3000:]
    return p

def last_json(p) -> dict:
    lines = p.stdout.strip().splitlines()
    assert len(lines) >= 2, p.stdout  # a table, then the JSON line
    return json.loads(lines[-1])

def test_bench_train():
    rec = last_json(run_cli("bench", "train", "--shape", "smoke", "--steps", "2", "--repeats", "2", "--warmup", "1", *FAST))
    assert rec["bench"] == "train" and rec["shape"] == "smoke" and rec["members"] == 1
    assert rec["tokens_per_s"] > 0 and rec["reference_tokens_per_s"] > 0 and rec["ms_per_step"] > 0
    assert rec["speed_vs_reference_per_member"] > 0
    for k in ("device_name", "torch", "dtype", "compile", "threads"): assert k in rec, k
    assert rec["threads"] == 1 and rec["compile"] is False and rec["dtype"] == "float32"
    assert 0 < rec["mfu"] < 1.5 and rec["peak_source"] == "measured float32 matmul", rec   # a fraction of this CPU's matmul peak

def in_process(*args) -> tuple[int, str, str]:
    "The CLI in this process (no interpreter start-up): exit code, stdout, stderr."
    out, err = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): rc = main(list(args))
    assert torch.get_num_threads() == threads  # --threads is restored afterwards
    return rc, out.getvalue(), err.getvalue()

def test_bench_train_members_no_reference():
    rc, out, err = in_process("bench", "train", "--shape", "smoke", "--members", "3", "--steps", "1", "--repeats", "1",
                              "--warmup", "1", "--no-reference", "--dropout", "0.1", *FAST)
    assert rc == 0, err
    rec = json.loads(out.strip().splitlines()[-1])
    assert rec["members"] == 3 and "reference_tokens_per_s" not in rec
    assert rec["dropout"]["mlp"] == [0.1, 0.1, 0.1]
    assert "GPT" in out and "ReferenceGPT" not in out

def test_bench_grid():
    p = run_cli("bench", "grid", "--grids", "smoke", "--members", "4", "--steps", "1", "--repeats", "1", "--warmup", "1",
                "--eval-batches", "1", *FAST)
    rec = last_json(p)
    assert rec["bench"] == "grid" and rec["projection"] is True and rec["grids"] == ["smoke"]
    g = rec["smoke"]
    assert g["members"] == 4 and g["runs"] == 20 and g["ratio_per_member"] > 0 and g["distinct_member_configs"] == 9
    assert g["projected_s"]["stacked"]["total_s"] > 0 and g["projected_s"]["one_at_a_time"]["groups"] == 20 and g["projected_s"]["stacked"]["groups"] == 5
    assert "PROJECTED" in p.stdout

def test_bench_generate():
    rec = last_json(run_cli("bench", "generate", "--shape", "smoke", "--new-tokens", "20", "--repeats", "1", "--warmup", "1", *FAST))
    assert rec["bench"] == "generate" and rec["new_tokens"] == 20 and rec["batch"] == 1
    assert rec["cache_tokens_per_s"] > 0 and rec["recompute_tokens_per_s"] > 0 and rec["cache_vs_recompute"] > 0
    assert "target" not in rec and "target_met" not in rec   # benchmarks report figures, not goals

def test_bench_bad_input():
    for args, word in [(("bench", "train", "--shape", "paper3"), "paper3"), (("bench", "grid", "--grids", "paper9"), "paper9"),
                       (("bench", "train", "--shape", "smoke", "--threads", "0"), "threads=0"),
                       (("bench", "generate", "--shape", "smoke", "--repeats", "0", "--device", "cpu"), "repeats=0"),
                       (("bench", "train", "--compile-mode", "fast", "--device", "cpu"), "compile_mode='fast'")]:
        rc, out, err = in_process(*args)
        assert rc == 2 and word in err, (args, err)
    with contextlib.redirect_stdout(io.StringIO()) as out, __import__("pytest").raises(SystemExit) as e: main(["bench", "--help"])
    assert e.value.code == 0 and "generate" in out.getvalue()

def test_bench_save_appends_the_record_and_its_command(tmp_path):
    "`--save PATH` appends the JSON line the command printed, with the command (less --save) and the date; the table reads it."
    from dropout_residual.bench import figures_table, read_records
    path = tmp_path/"figs"/"figures.jsonl"
    for _ in range(2):
        rc, out, err = in_process("bench", "generate", "--shape", "smoke", "--new-tokens", "12", "--repeats", "1", "--warmup", "0",
                                  "--save", str(path), *FAST)
        assert rc == 0 and f"record appended to {path}" in err
    recs = read_records(path)
    assert len(recs) == 2 and recs[1]["command"] == "dropout-residual bench generate --shape smoke --new-tokens 12 --repeats 1 --warmup 0 --threads 1 --device cpu"
    printed = json.loads(out.strip().splitlines()[-1])
    assert {k: v for k, v in recs[1].items() if k not in ("command", "date")} == printed
    t = figures_table(recs)
    assert len(t) == 2 and (t.figure > 0).all() and t.what[0].startswith("generation, smoke model")
