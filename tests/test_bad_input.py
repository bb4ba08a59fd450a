"""Bad input across the public API and the command line: each case of `dropout_residual.reliability.BAD_INPUTS`
(the table the docs page `19_reliability` renders) must raise its exception type with a message naming the
offending field or file."""
import pytest

from dropout_residual.reliability import BAD_INPUTS, run_case

def test_the_table_is_big_and_ids_unique():
    ids = [c.id for c in BAD_INPUTS]
    assert len(ids) >= 30 and len(set(ids)) == len(ids)
    assert {c.area for c in BAD_INPUTS} >= {"config", "data", "checkpoint", "schedule", "sweep", "analysis", "cli"}

@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c.id for c in BAD_INPUTS])
def test_bad_input(case, tmp_path):
    row = run_case(case, tmp_path)
    e = row["exception"]
    if e is None: pytest.fail(f"{case.call} raised nothing; expected {case.error.__name__} naming {case.match!r}", pytrace=False)
    if not isinstance(e, case.error): raise AssertionError(f"{case.call} raised {type(e).__name__}, expected {case.error.__name__}") from e
    want, got = case.match.replace("{ws}", str(tmp_path)), str(row["message"]).replace("{ws}", str(tmp_path))
    if want not in got: pytest.fail(f"{case.call}: the message does not name {want!r}: {got!r}", pytrace=False)

def test_the_installed_command_exits_2_with_one_clear_line(tmp_path):
    "The real console script, not just `main()`: bad input is exit code 2 and one line naming the value, no traceback."
    import subprocess
    r = subprocess.run(["dropout-residual", "sweep", "paper4", "--runs", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "paper4" in r.stderr and "Traceback" not in r.stderr, r.stderr
