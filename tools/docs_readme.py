"""Quarto's post-render step for the documentation site: README.md is the one `tests/readme.py` renders.
`nbdev_docs` also renders README.md from `index.ipynb` with Quarto's GitHub markdown writer, which
rewraps lines and drops the summary; this script puts `tests/readme.py`'s rendering in its place, so
`nbdev_docs` leaves the committed README.md as it is (and `tests/test_readme.py` keeps them in sync)."""
import os, sys
from pathlib import Path

if __name__ == "__main__":
    out = Path(os.environ.get("QUARTO_PROJECT_OUTPUT_DIR", "_docs"))/"README.md"
    if out.exists():
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]/"tests"))
        from readme import render_index
        out.write_text(render_index(), encoding="utf-8")
