"""The documentation site: one Quarto config, every page it names exists, and the site as `nbdev_docs`
builds it. Where Quarto is installed (`.ci/run` installs it under HOME), the site is rendered for real
on a copy of the repo: every sidebar page exists as HTML, the library and guide pages show executed
outputs with figures, no page shows a traceback, every cross-reference lands on an anchor, and
README.md is left as committed. Without Quarto, nbdev's own processing steps (all of `nbdev_docs`
but Quarto) are checked and the rendering tests are skipped."""
import json, os, re, shutil, subprocess, sys, time
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT/"nbs"
SITE_URL = "https://dropout-residual.github.io/dropout_residual/"  # settings.ini: doc_host + doc_baseurl

def _quarto_bin() -> Path|None:
    "The folder holding a Quarto: on PATH, or where `.ci/run` installs it."
    q = shutil.which("quarto") or next((str(p) for p in [Path.home()/".local"/"quarto"/"bin"/"quarto"] if p.is_file()), None)
    return Path(q).parent if q else None

QUARTO = _quarto_bin()
needs_quarto = pytest.mark.skipif(QUARTO is None, reason="Quarto is not installed (`.ci/run` installs it: "
                                  "../shared/tools/quarto/install ~/.local/quarto); the site is not rendered")
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

def _copy_repo(dst: Path) -> Path:
    "The committed files of the repo (and their working-tree contents) copied to `dst`."
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        (dst/f).parent.mkdir(parents=True, exist_ok=True)
        src = ROOT/f
        if src.is_symlink(): (dst/f).symlink_to(os.readlink(src))
        elif src.is_file(): shutil.copy2(src, dst/f)
    return dst

@pytest.fixture(scope="module")
def built(tmp_path_factory):
    "A copy of the repo after `nbdev_docs` (real Quarto) or, without Quarto, after nbdev's processing alone."
    dst = _copy_repo(tmp_path_factory.mktemp("docs")/"repo")
    env = dict(os.environ, DOCS_N_WORKERS="2")
    if QUARTO is None:
        code = ("from nbdev.quarto import refresh_quarto_yml; from nbdev.serve import proc_nbs; import nbdev.doclinks; "
                "refresh_quarto_yml(); nbdev.doclinks._build_modidx(); print(proc_nbs(n_workers=2))")
        cmd = [sys.executable, "-c", code]
    else:
        env["PATH"] = f"{QUARTO}{os.pathsep}{env['PATH']}"
        cmd = [str(Path(sys.executable).parent/"nbdev_docs"), "--n_workers", "2"]
    t0 = time.monotonic()
    r = subprocess.run(cmd, cwd=dst, env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    print(f"\n{' '.join(cmd[-3:])}: {time.monotonic() - t0:.0f} s")
    return dst

@pytest.fixture(scope="module")
def processed(built): return built/"_proc"

@pytest.fixture(scope="module")
def site(built):
    if QUARTO is None: pytest.skip("Quarto is not installed: the site was not rendered")
    return built/"_docs"

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

def _page_html(processed: Path, page: str) -> str:
    "The HTML file Quarto writes for notebook `page` (nbdev names it in the front matter's `output-file`)."
    nb = json.loads((processed/page).read_text())
    m = re.search(r"^output-file:\s*(\S+)", "".join(nb["cells"][0]["source"]), re.M)
    return str(Path(page).parent/(m.group(1) if m else Path(page).stem + ".html"))

@needs_quarto
def test_every_sidebar_page_is_rendered(site, processed):
    missing = [p for p in _pages() if not (site/_page_html(processed, p)).is_file()]
    assert not missing, f"pages in _quarto.yml with no HTML in the rendered site: {missing}"
    sidebar = set(re.findall(r'<a href="\./([^"]+)" class="sidebar-item-text sidebar-link', (site/"index.html").read_text()))
    assert sidebar == {_page_html(processed, p) for p in _pages()}, "the rendered sidebar differs from _quarto.yml's"

@needs_quarto
@pytest.mark.parametrize("page", ["14_viz.ipynb", "18_tour.ipynb", "07_train.ipynb"])
def test_executed_pages_show_figures(site, processed, page):
    html = site/_page_html(processed, page)
    imgs = re.findall(r'<img[^>]+src="([^"]+)"', html.read_text())
    assert imgs, f"{html.name}: no images (the page was not executed at build time?)"
    gone = [i for i in imgs if not i.startswith(("http", "data:")) and not (html.parent/unquote(i)).is_file()]
    assert not gone, f"{html.name}: images missing from the site: {gone}"

@needs_quarto
def test_library_and_guide_pages_were_executed(site, processed):
    "tools/docs_execute.py ran every numbered notebook before the render (nbdev alone runs only show_doc cells)."
    skipped = [p.name for p in sorted(NBS.glob("[0-9]*.ipynb"))
               if not json.loads((processed/p.name).read_text())["metadata"].get("dropout_residual_docs_executed")]
    assert not skipped, f"notebooks rendered without being executed: {skipped}"

def _html_pages(site: Path) -> list[Path]: return sorted(p for p in site.rglob("*.html") if "site_libs" not in p.parts)

@needs_quarto
def test_no_page_shows_a_traceback(site):
    bad = [str(p.relative_to(site)) for p in _html_pages(site)
           if "Traceback (most recent call last)" in (t := p.read_text()) or "cell-output-error" in t]
    assert not bad, f"pages showing a Python traceback or error output: {bad}"

@needs_quarto
def test_cross_references_land_on_anchors(site):
    "Every link into the site with a #fragment (nbdev's backtick links included) names an id on its page."
    ids, bad = {}, []
    def anchors(p: Path):
        if p not in ids: ids[p] = set(re.findall(r'\bid="([^"]+)"', p.read_text())) if p.is_file() else None
        return ids[p]
    for page in _html_pages(site):
        for href in set(re.findall(r'href="([^"]*#[^"]+)"', page.read_text())):
            url, _, frag = href.partition("#")
            if url.startswith(SITE_URL): target = site/url[len(SITE_URL):]
            elif re.match(r"^[a-z]+:", url): continue  # other sites (source links on GitHub, papers)
            else: target = (page.parent/url).resolve() if url else page
            if frag.startswith("quarto-"): continue  # Quarto's own scripted anchors
            if (a := anchors(target)) is None or unquote(frag) not in a: bad.append(f"{page.relative_to(site)} -> {href}")
    assert not bad, "cross-references to missing anchors:\n" + "\n".join(sorted(bad))

@needs_quarto
def test_site_hygiene(site, built):
    res = site/"papers"/"results"
    assert not [p for p in res.rglob("*") if p.is_file() and p.suffix != ".csv"], "papers/results/** must not be rendered as pages"
    assert list(res.rglob("*.csv")), "the results CSVs are published as downloads (_quarto.yml resources)"
    assert not list(site.rglob("*.md")), "no markdown (CommonMark) outputs beside the HTML pages"
    assert "CommonMark" not in (site/"index.html").read_text(), "pages link a CommonMark format"
    assert (built/"README.md").read_text(encoding="utf-8") == (ROOT/"README.md").read_text(encoding="utf-8"), \
        "nbdev_docs changed README.md (tools/docs_readme.py keeps it as tests/readme.py renders it)"

def test_summaries_are_one_line():
    "Quarto keeps only the first line of a `>` summary: each page's description is the whole summary."
    for p in _pages():
        src = "".join(next(c for c in json.loads((NBS/p).read_text())["cells"] if c["cell_type"] == "markdown")["source"])
        quote = [l for l in src.splitlines() if l.startswith(">")]
        assert len(quote) == 1, f"{p}: the summary spans {len(quote)} lines; make it one `>` line"

@pytest.mark.parametrize("nb", sorted(str(p.relative_to(NBS)) for p in NBS.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts))
def test_notebook_opens_with_python3_kernel(nb):
    "A python3 kernelspec in the metadata (which nbdev_clean keeps): JupyterLab opens it without asking."
    from nbdev.clean import clean_nb
    meta = json.loads((NBS/nb).read_text())["metadata"]
    assert meta.get("kernelspec", {}).get("name") == "python3", f"{nb}: no python3 kernelspec in its metadata"
    cleaned = json.loads((NBS/nb).read_text()); clean_nb(cleaned)
    assert cleaned["metadata"]["kernelspec"] == meta["kernelspec"], f"{nb}: nbdev_clean drops the kernelspec"

def test_jupyter_save_hook_cleans(tmp_path):
    "settings.ini turns on nbdev's Jupyter hooks: saving a notebook in JupyterLab cleans it."
    from nbdev.clean import clean_jupyter
    from nbdev.config import get_config
    assert get_config(path=ROOT).jupyter_hooks, "settings.ini: jupyter_hooks = True"
    nb = json.loads((NBS/"00_utils.ipynb").read_text())
    code = next(c for c in nb["cells"] if c["cell_type"] == "code")
    code["execution_count"] = 7; nb["metadata"]["stray"] = {"x": 1}
    clean_jupyter(path=NBS/"00_utils.ipynb", model={"type": "notebook", "content": nb})
    assert code["execution_count"] is None and "stray" not in nb["metadata"] and nb["metadata"]["kernelspec"]

def test_navbar_shows_the_version_and_the_source():
    "The navbar carries settings.ini's version and a link to the repository."
    from nbdev.config import get_config
    cfg, quarto = get_config(path=ROOT), (NBS/"_quarto.yml").read_text()
    assert f'text: "v{cfg.version}"' in quarto, f"nbs/_quarto.yml: the navbar's version is not settings.ini's {cfg.version}"
    assert f"href: {cfg.git_url}" in quarto and "icon: github" in quarto, "nbs/_quarto.yml: no GitHub link in the navbar"

@pytest.mark.parametrize("nb", sorted(str(p.relative_to(NBS)) for p in NBS.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts))
def test_no_stale_widget_state(nb):
    "Widget states saved in a notebook's metadata make its page load require.js for widgets that no kernel drives."
    assert "widgets" not in json.loads((NBS/nb).read_text())["metadata"], \
        f"{nb}: widget states in its metadata; run it with tools/execute_papers.py (which drops them) or delete metadata.widgets"
