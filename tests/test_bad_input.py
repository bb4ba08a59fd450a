"""Bad input across the public API and the command line: each case of `tests/bad_inputs.py` (the table the docs page
`19_reliability` renders) must raise its exception type with a message naming the offending field or file."""
import re, subprocess

import pytest

from bad_inputs import CASES

def test_the_table_is_big_and_ids_unique():
    ids = [c.id for c in CASES]
    assert len(ids) >= 30 and len(set(ids)) == len(ids)
    assert {c.area for c in CASES} >= {"config", "data", "checkpoint", "schedule", "sweep", "analysis", "cli"}

@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, tmp_path, monkeypatch):
    monkeypatch.setenv("IN_TEST", "1")   # no progress bars from the cases
    if case.setup is not None: case.setup(tmp_path)
    with pytest.raises(case.error, match=re.escape(case.fragment(tmp_path))) as e: case.do(tmp_path)
    if case.exit_code is not None: assert e.value.code == case.exit_code, e.value

def test_every_case_shows_its_code():
    "The docs table shows each case's source: the call, after the setup where there is one."
    by_id = {c.id: c for c in CASES}
    assert by_id["cfg-n_head-divides"].code() == "GPTConfig(n_head=5, n_embd=64)"
    assert by_id["ckpt-missing"].code() == "(run_copy(ws) / 'ckpt.pt').unlink(); load_run(ws / 'run')"
    assert all(c.code() for c in CASES)

def test_the_installed_command_exits_2_with_one_clear_line(tmp_path):
    "The real console script, not just `main()`: bad input is exit code 2 and one line naming the value, no traceback."
    r = subprocess.run(["dropout-residual", "sweep", "paper4", "--runs", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "paper4" in r.stderr and "Traceback" not in r.stderr, r.stderr
