import re
from readme import ROOT, render_index

def test_readme_in_sync_with_index():
    assert (ROOT/"README.md").read_text(encoding="utf-8") == render_index(), \
        "README.md differs from nbs/index.ipynb: run `python tests/readme.py` (or nbdev_docs) and commit"

def test_ci_runs_the_readme_test_command():
    readme = (ROOT/"README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```sh\n(.*?)\n```", readme, re.S)
    test_cmd = next(b for b in blocks if "tests/run.sh" in b)
    assert test_cmd.strip() in (ROOT/".ci"/"run").read_text(encoding="utf-8")
