"""The house rules, read from the code: each module imports only the modules above it (so there is no import
cycle), only `viz` and `widgets` import matplotlib or seaborn, no function is longer than 80 lines, no exported
notebook cell is longer than 80 lines, and every module's docstring is a whole sentence."""
import ast, json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT/"dropout_residual"
ORDER = ["utils", "data", "config", "layers", "model", "schedules", "checkpoint", "train", "dynamics", "store", "papers",
         "stats", "sweep", "bench", "viz", "report", "widgets", "cli"]
PLOTTING = {"viz", "widgets"}
MAX_LINES = 80

def _modules():
    return sorted(p.stem for p in PKG.glob("*.py") if not p.stem.startswith("_"))

def _tree(mod): return ast.parse((PKG/f"{mod}.py").read_text(encoding="utf-8"))

def _imports(tree):
    "Every module name imported anywhere in `tree` (function bodies included), as dotted strings."
    out = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Import): out += [a.name for a in n.names]
        elif isinstance(n, ast.ImportFrom):
            if n.level: out.append("dropout_residual." + (n.module or ""))
            else:
                out.append(n.module or "")
                if n.module == "dropout_residual": out += [f"dropout_residual.{a.name}" for a in n.names]
    return out

def test_every_module_has_a_place_in_the_order():
    assert _modules() == sorted(ORDER), f"modules not in ORDER: {set(_modules()) ^ set(ORDER)}"

@pytest.mark.parametrize("mod", ORDER)
def test_imports_only_modules_above(mod):
    above = set(ORDER[:ORDER.index(mod)])
    bad = []
    for name in _imports(_tree(mod)):
        parts = name.split(".")
        if parts[0] == "dropout_residual" and len(parts) > 1 and parts[1] and parts[1] != "__version__":
            if parts[1] not in above and parts[1] != mod: bad.append(parts[1])   # itself (by name, for spawned workers): no cycle
    assert not bad, f"{mod} imports {sorted(set(bad))}, which are not above it in {ORDER}"

@pytest.mark.parametrize("mod", ORDER)
def test_only_viz_and_widgets_plot(mod):
    plots = sorted({n.split(".")[0] for n in _imports(_tree(mod))} & {"matplotlib", "seaborn"})
    assert mod in PLOTTING or not plots, f"{mod} imports {plots}; figures belong in viz"

def test_an_import_cycle_is_caught():
    "The rule is strict (a module may not import itself or a module below it), so a cycle cannot pass."
    tree = ast.parse("from .sweep import sweep\nimport dropout_residual.viz")
    assert "dropout_residual.sweep" in _imports(tree) and "dropout_residual.viz" in _imports(tree)

@pytest.mark.parametrize("mod", ORDER)
def test_functions_fit_a_screen(mod):
    long = [f"{n.name} ({n.end_lineno - n.lineno + 1} lines, line {n.lineno})" for n in ast.walk(_tree(mod))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > MAX_LINES]
    assert not long, f"{mod}: functions over {MAX_LINES} lines: {long}"

def _export_cells():
    for nb in sorted((ROOT/"nbs").glob("*.ipynb")):
        for i, c in enumerate(json.loads(nb.read_text(encoding="utf-8"))["cells"]):
            src = "".join(c["source"])
            if c["cell_type"] == "code" and any(l.strip() in ("#| export", "#| exporti") for l in src.splitlines()[:3]):
                yield nb.name, i, len(src.splitlines())

def test_export_cells_fit_a_screen():
    long = [f"{nb} cell {i}: {n} lines" for nb, i, n in _export_cells() if n > MAX_LINES]
    assert list(_export_cells()), "no export cells found"
    assert not long, f"export cells over {MAX_LINES} lines: {long}"

@pytest.mark.parametrize("mod", ORDER)
def test_module_docstring_is_a_sentence(mod):
    doc = ast.get_docstring(_tree(mod))
    assert doc, f"{mod} has no module docstring (the notebook's `> summary` line)"
    assert doc.rstrip().endswith((".", ".)")) and (doc[0].isupper() or doc[0] in "`\""), f"{mod}: {doc!r} is not a whole sentence"
