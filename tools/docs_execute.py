"""Quarto's pre-render step for the documentation site: run the library and guide notebooks so that
their pages show outputs. Notebooks are committed without outputs and nbdev's docs processing runs
only the export, import and show_doc cells; this script processes each `nbs/[0-9]*.ipynb` again with
nbdev's own processors, executing every code cell that `nbdev_test` would run (cells flagged with one
of settings.ini's `tst_flags`, `eval: false` cells and `nbdev_export()` are skipped), and writes the
result into nbdev's `_proc` folder, where Quarto renders it. A cell that raises stops the build.
Names of private helpers (`_save`) are left unlinked: they have no show_doc, so no anchor to link to.
`index.ipynb` and the paper notebooks carry their outputs and are left as nbdev processed them."""
import os, sys
from pathlib import Path

from execnb.nbio import read_nb, write_nb
from fastcore.xtras import working_directory
from fastcore.parallel import parallel
from nbdev.config import get_config
from nbdev.process import NBProcessor
from nbdev.doclinks import NbdevLookup
from nbdev.processors import FilterDefaults, add_links, exec_show_docs

MARK = "dropout_residual_docs_executed"

class exec_all(exec_show_docs):
    "Execute every cell `nbdev_test` runs (not only those needed by show_doc), in the notebook's folder."
    def __call__(self, cell):
        if not hasattr(self, "k") or cell.cell_type != "code" or not cell.source: return
        direc = getattr(cell, "directives_", {}) or {}
        if "nbdev_export" + "(" in cell.source or direc.get("eval:", [""])[0].lower() == "false": return
        if self.skip & direc.keys(): return
        self.k.cell(cell)
        if self.k.exc: raise RuntimeError(f"{self.fn.name}: cell {cell.idx_} raised:\n{cell.source}") from self.k.exc

class PublicLookup(NbdevLookup):
    "nbdev's symbol lookup without private names (`_save`, `GPT._block`): they have no doc anchor."
    def doc(self, sym): return None if sym.split(".")[-1].startswith("_") else super().doc(sym)

def add_public_links(cell):
    "nbdev's `add_links`, linking only public names."
    nl = PublicLookup()
    if cell.cell_type == "markdown": cell.source = nl.linkify(cell.source)
    for o in cell.get("outputs", []):
        if hasattr(o, "data") and hasattr(o["data"], "text/markdown"):
            o.data["text/markdown"] = [nl.link_line(s) for s in o.data["text/markdown"]]

class ExecAll(FilterDefaults):
    "nbdev's docs processors with `exec_all` for `exec_show_docs` and `add_public_links` for `add_links`."
    def base_procs(self):
        swap = {exec_show_docs: exec_all, add_links: add_public_links}
        return [swap.get(p, p) for p in super().base_procs()]

def execute(src: Path, dst: Path):
    "Process and execute notebook `src` into `dst`."
    exec_all.fn, exec_all.skip = src, set(get_config().get("tst_flags", "").split())
    os.environ["IN_TEST"] = "1"
    with working_directory(src.parent):
        nb = read_nb(src)
        ExecAll()(nb)
    nb.metadata[MARK] = True
    write_nb(nb, dst)
    print(f"executed {src.name}", file=sys.stderr)

def _todo(nbs: Path, proc: Path):
    "Notebooks whose processed copy is not yet an executed one (nbdev rewrites a copy whose source changed)."
    for src in sorted(nbs.glob("[0-9]*.ipynb")):
        dst = proc/src.name
        if not (dst.exists() and read_nb(dst).metadata.get(MARK)): yield src, dst

def _run(o): execute(*o)

if __name__ == "__main__":
    if not os.environ.get("QUARTO_PROJECT_RENDER_ALL"): sys.exit(0)  # a single page (README.md): no execution
    cfg = get_config()
    todo = list(_todo(cfg.nbs_path, Path.cwd()))
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # workers import `_run` from this file as a module
    from docs_execute import _run
    parallel(_run, todo, n_workers=int(os.environ.get("DOCS_N_WORKERS", 2)), method="spawn", pause=0.01)
