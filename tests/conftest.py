import os, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
SHARED_DATA = ROOT.parent/"shared"/"data"
if not os.environ.get("DROPOUT_RESIDUAL_DATA") and SHARED_DATA.is_dir():
    os.environ["DROPOUT_RESIDUAL_DATA"] = str(SHARED_DATA)
os.environ.setdefault("MPLBACKEND", "Agg")
