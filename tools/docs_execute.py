"""Quarto's pre-render step for the documentation site: run the library and guide notebooks so that
their pages show outputs. Notebooks are committed without outputs and nbdev's docs processing runs
only the export, import and show_doc cells; this script processes each `nbs/[0-9]*.ipynb` again with
nbdev's own processors, executing every code cell that `nbdev_test` would run (cells flagged with one
of settings.ini's `tst_flags`, `eval: false` cells and `nbdev_export()` are skipped), and writes the
result into nbdev's `_proc` folder, where Quarto renders it. A cell that raises stops the build.
`index.ipynb` and the paper notebooks carry their outputs and are left as nbdev processed them."""
import os, sys
from pathlib import Path

from execnb.nbio import read_nb, write_nb
from fastcore.xtras import working_directory
from fastcore.parallel import parallel
from nbdev.config import get_config
from nbdev.process import NBProcessor
from nbdev.processors import FilterDefaults, exec_show_docs

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

class ExecAll(FilterDefaults):
    "nbdev's docs processors with `exec_show_docs` replaced by `exec_all`."
    def base_procs(self): return [exec_all if p is exec_show_docs else p for p in super().base_procs()]

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
