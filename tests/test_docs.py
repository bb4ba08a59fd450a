"""The documentation site: one Quarto config, every page it names exists, and nbdev's processing
(what `nbdev_docs` feeds to Quarto) yields the API docs and the saved figures. Quarto itself is not
installed here; `nbdev_proc_nbs` would try to install it, so the test runs nbdev's own steps."""
import json, os, re, shutil, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT/"nbs"

def test_one_quarto_config():
    link = NBS/"_quarto.yml"
    assert link.is_symlink() and link.resolve() == (ROOT/"_quarto.yml").resolve(), \
        "nbs/_quarto.yml must be a link to the top-level _quarto.yml (one real config)"

def _pages():
    text = (ROOT/"_quarto.yml").read_text()
    return sorted(set(re.findall(r"([\w/\-]+\.ipynb)", text)))

def test_every_page_in_the_site_exists():
    missing = [p for p in _pages() if not (NBS/p).is_file()]
    assert not missing, f"_quarto.yml names pages that do not exist: {missing}"

def test_every_notebook_is_in_the_site():
    nbs = {str(p.relative_to(NBS)) for p in NBS.rglob("*.ipynb") if "_proc" not in p.parts and ".ipynb_checkpoints" not in p.parts}
    assert not (nbs - set(_pages())), f"notebooks missing from the sidebar in _quarto.yml: {sorted(nbs - set(_pages()))}"

@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    "Run nbdev's docs processing (all of nbdev_docs but Quarto) on a copy of the repo."
    dst = tmp_path_factory.mktemp("docs")/"repo"
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        (dst/f).parent.mkdir(parents=True, exist_ok=True)
        src = ROOT/f
        if src.is_symlink(): (dst/f).symlink_to(os.readlink(src))
        elif src.is_file(): shutil.copy2(src, dst/f)
    code = ("from nbdev.quarto import refresh_quarto_yml; from nbdev.serve import proc_nbs; import nbdev.doclinks; "
            "refresh_quarto_yml(); nbdev.doclinks._build_modidx(); print(proc_nbs(n_workers=2))")
    r = subprocess.run([sys.executable, "-c", code], cwd=dst, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return dst/"_proc"

def _outputs(nb_path):
    nb = json.loads(nb_path.read_text())
    return [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]

def _library_notebooks():
    return sorted(p.name for p in NBS.glob("*.ipynb") if "#| default_exp" in p.read_text())

@pytest.mark.parametrize("name", _library_notebooks())
def test_processed_notebook_has_api_docs(processed, name):
    md = ["".join(o.get("data", {}).get("text/markdown", [])) for o in _outputs(processed/name)]
    assert any(m.startswith("---") and "```python" in m for m in md), f"{name}: no show_doc output after processing"

def test_processed_quarto_config_is_the_top_level_one(processed):
    assert (processed/"_quarto.yml").read_text() == (ROOT/"_quarto.yml").read_text()

def test_saved_figures_reach_the_docs(processed):
    "Notebooks committed with figures keep them through processing (the docs show real plots)."
    with_figs = [p for p in NBS.rglob("*.ipynb") if "image/png" in p.read_text()]
    for p in with_figs:
        q = processed/p.relative_to(NBS)
        assert any("image/png" in o.get("data", {}) for o in _outputs(q)), f"{p.name}: figures lost in processing"

def _code_cells(nb_path):
    return [("".join(c["source"]), i) for i, c in enumerate(json.loads(nb_path.read_text())["cells"]) if c["cell_type"] == "code"]

@pytest.mark.parametrize("nb", sorted(str(p.relative_to(NBS)) for p in NBS.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts))
def test_imports_in_their_own_cells(nb):
    """nbdev's docs processing executes every cell that imports something: such a cell must hold
    only imports (exported cells excepted), or building the docs would run notebook code."""
    import ast
    bad = []
    for src, i in _code_cells(NBS/nb):
        if re.search(r"^#\|\s*export", src, re.M): continue
        try: tree = ast.parse("\n".join(l for l in src.splitlines() if not l.lstrip().startswith(("%", "!"))))
        except SyntaxError: continue
        kinds = [isinstance(s, (ast.Import, ast.ImportFrom)) for s in tree.body]
        if any(kinds) and not all(kinds): bad.append(i)
    assert not bad, f"{nb}: cells {bad} mix imports with other code; put the imports in a cell of their own"
