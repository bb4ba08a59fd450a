"""README.md is rendered from nbs/index.ipynb. `nbdev_docs` does it where Quarto exists; this
script does the same rendering without Quarto (`python tests/readme.py` rewrites README.md) and
`tests/test_readme.py` fails when the two have drifted apart."""
import json, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def render_index(nb_path: Path = ROOT/"nbs"/"index.ipynb") -> str:
    "Markdown cells as they are, visible code cells as fenced Python blocks, `echo: false` cells as their markdown outputs."
    cells = json.loads(nb_path.read_text(encoding="utf-8"))["cells"]
    parts = []
    for c in cells:
        src = "".join(c["source"]).strip()
        if not src: continue
        if c["cell_type"] == "markdown": parts.append(src)
        elif c["cell_type"] == "code":
            lines = src.splitlines()
            if any(l.strip() in ("#| hide", "#|hide") or l.startswith("#| default_exp") for l in lines): continue
            if any(l.strip() == "#| echo: false" for l in lines):      # the cell's computed markdown, not its code
                parts += ["".join(o["data"]["text/markdown"]).strip() for o in c.get("outputs", []) if "text/markdown" in o.get("data", {})]
                continue
            parts.append("```python\n" + "\n".join(l for l in lines if not l.startswith("#|")) + "\n```")
    return "\n\n".join(parts) + "\n"

if __name__ == "__main__":
    (ROOT/"README.md").write_text(render_index(), encoding="utf-8")
    print("README.md rewritten from nbs/index.ipynb", file=sys.stderr)
