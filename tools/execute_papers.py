"""Run paper notebooks top to bottom and write their outputs into them: the paper pages carry their outputs.
As `nbdev_test` does, `IN_TEST` is set (the control panel trains the smoke preset) and cells flagged with one of
settings.ini's `tst_flags` (the `slow` regeneration cells) are skipped. Widget states are not kept.
Usage, from the repository root: python tools/execute_papers.py nbs/papers/11_paper2_dynamic_dropout.ipynb [...]"""
import os, sys
from pathlib import Path

from execnb.nbio import read_nb, write_nb
from execnb.shell import CaptureShell
from fastcore.xtras import working_directory
from nbdev.config import get_config

def flags(source: str) -> set[str]:
    "The `#| name` directives of a cell."
    return {l[3:].split()[0] for l in source.splitlines() if l.startswith("#| ") and l[3:].strip()}

def execute(path: Path):
    skip = set(get_config().get("tst_flags", "").split())
    os.environ["IN_TEST"] = "1"
    nb = read_nb(path)
    k = CaptureShell(path)
    with working_directory(path.parent):
        k.run_all(nb, exc_stop=True, preproc=lambda c: c.cell_type != "code" or bool(flags(c.source) & skip))
    nb.metadata.pop("widgets", None)
    write_nb(nb, path)
    print(f"executed {path}", file=sys.stderr)

if __name__ == "__main__":
    for p in sys.argv[1:]: execute(Path(p).resolve())
