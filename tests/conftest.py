import os, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
SHARED_DATA = ROOT.parent/"shared"/"data"
if not os.environ.get("DROPOUT_RESIDUAL_DATA") and SHARED_DATA.is_dir():
    os.environ["DROPOUT_RESIDUAL_DATA"] = str(SHARED_DATA)
os.environ.setdefault("MPLBACKEND", "Agg")
# One intra-op thread for the whole session and for every python the tests spawn (they inherit os.environ):
# the models under test are tiny and the machine is shared, where spin-waiting threads made small ops 10-50x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch
torch.set_num_threads(1)

def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU; skipped without one (tools/gpu_check.sh runs them on a lent GPU)")
