"""Safety: checkpoints load with `weights_only=True` (no code runs from a file), the dataset download is verified
before use and written atomically (a kill mid-download leaves nothing that passes for the dataset), and nothing but
the dataset is downloaded (Pythia weights only when asked). `tests/test_data.py` covers the checksum of a download
and of an explicit path; this file adds what it does not."""
import ast, functools, http.server, inspect, os, shutil, signal, socket, subprocess, sys, threading, time
from pathlib import Path

import pytest, torch

import dropout_residual
from dropout_residual import data as D
from fixtures import tiny_configs, tiny_data, tiny_run

PKG = Path(dropout_residual.__file__).parent
MODULES = sorted(p for p in PKG.glob("*.py") if p.name != "_modidx.py")

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

# ---------------------------------------------------------------- weights_only everywhere
def _calls(path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call): yield node, ast.unparse(node.func)

def test_every_torch_load_is_weights_only():
    bad = []
    for f in MODULES:
        for node, name in _calls(f):
            if name in ("torch.load", "torch.serialization.load"):
                kw = {k.arg: k.value for k in node.keywords}
                if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                    bad.append(f"{f.name}:{node.lineno}: {ast.unparse(node)}")
            if name in ("pickle.load", "pickle.loads", "pickle.Unpickler", "dill.load", "marshal.load", "marshal.loads"):
                bad.append(f"{f.name}:{node.lineno}: {ast.unparse(node)}")
            if name in ("np.load", "numpy.load") and any(k.arg == "allow_pickle" for k in node.keywords):
                bad.append(f"{f.name}:{node.lineno}: {ast.unparse(node)}")
    assert not bad, "loading that can run code from a file:\n" + "\n".join(bad)

def test_the_package_runs_no_code_from_strings():
    "No `eval`/`exec`/`compile` of text, no shell command, no object that runs code when unpickled: those live in tests/ only."
    bad = []
    for f in MODULES:
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("eval", "exec", "compile", "os.system", "os.popen"):
                bad.append(f"{f.name}:{node.lineno}: {ast.unparse(node)}")
            if isinstance(node, ast.FunctionDef) and node.name in ("__reduce__", "__reduce_ex__", "__setstate__"):
                bad.append(f"{f.name}:{node.lineno}: def {node.name}")
    assert not bad, "code that runs strings or pickles code, in the package:\n" + "\n".join(bad)

class _Plant:
    "Unpickling this creates a file: proof that code from a checkpoint ran."
    def __init__(self, marker): self.marker = str(marker)
    def __reduce__(self): return (open, (self.marker, "w"))

@pytest.fixture
def run_with(tmp_path):
    "run_with(relpath) -> a copy of the tiny run whose `relpath` holds a pickled object; the marker it would create."
    def make(rel):
        r = Path(shutil.copytree(tiny_run(), tmp_path/"run"))
        marker = tmp_path/"code-ran"
        target = r/rel
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": _Plant(marker), "tokens": _Plant(marker), "step": 0}, target)
        return r, target, marker
    return make

def _loaders():
    from dropout_residual import dynamics as Y, train as T
    from dropout_residual import checkpoint as CK
    return {
        "load_checkpoint": ("ckpt.pt", lambda r, f: CK.load_checkpoint(f)),
        "load_run": ("ckpt.pt", lambda r, f: CK.load_run(r)),
        "train-resume": ("ckpt.pt", lambda r, f: T.train(*tiny_configs(), data=tiny_data(), out_dir=r, progress=False)),
        "convergence": ("analysis/step_0000004.pt", lambda r, f: Y.convergence(r, data=tiny_data(), progress=False)),
        "analysis_model": ("analysis/step_0000008.pt", lambda r, f: CK.RunFolder(r).analysis_model()),
        "load_probe": ("probe.pt", lambda r, f: Y.load_probe(r, 16)),
    }

@pytest.mark.parametrize("loader", ["load_checkpoint", "load_run", "train-resume", "convergence", "analysis_model", "load_probe"])
def test_a_pickled_object_in_a_file_never_runs(run_with, loader):
    rel, call = _loaders()[loader]
    r, f, marker = run_with(rel)
    with pytest.raises(Exception) as e: call(r, f)
    assert not marker.exists(), f"{loader} executed code from {f}"
    assert "weights_only" in str(e.value) or "Unsupported global" in str(e.value) or str(f) in str(e.value), \
        f"{loader}: the error does not say why the file was refused: {e.value!r}"

# ---------------------------------------------------------------- the download
def test_corrupt_cached_dataset_is_refused(tmp_path, monkeypatch):
    "A truncated copy in the cache is never used: the error names the cached file."
    monkeypatch.delenv(D.DATA_ENV, raising=False)
    monkeypatch.setenv(D.CACHE_ENV, str(tmp_path/"cache"))
    cached = D.cache_dir()/"tinyshakespeare"/"input.txt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(SRC.read_bytes()[: D.TINY_SHAKESPEARE_CHARS // 2])
    with pytest.raises(ValueError, match="sha256") as e: D.shakespeare(download=False)
    assert str(cached) in str(e.value)

SRC = Path(os.environ["DROPOUT_RESIDUAL_DATA"])/"tinyshakespeare"/"input.txt"

class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a): pass

@pytest.fixture
def server(tmp_path):
    root = tmp_path/"www"; root.mkdir(); shutil.copy(SRC, root/"input.txt")
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/input.txt"
    srv.shutdown()

_HANG_IN_RENAME = """
import os, sys, time
from pathlib import Path
real = os.replace
def replace(src, dst, *a, **k):
    Path(sys.argv[2]).write_text(str(src)); time.sleep(600)
os.replace = replace
from dropout_residual.data import download_tiny_shakespeare
download_tiny_shakespeare(url=sys.argv[1])
"""

def test_download_killed_before_the_rename_leaves_no_dataset(tmp_path, server):
    "SIGKILL while the verified download sits in its temporary file: no input.txt appears; the next download works."
    cache = tmp_path/"cache"
    env = {**os.environ, D.CACHE_ENV: str(cache), "OMP_NUM_THREADS": "1"}
    env.pop(D.DATA_ENV, None)
    flag = tmp_path/"in-rename"
    p = subprocess.Popen([sys.executable, "-c", _HANG_IN_RENAME, server, str(flag)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not flag.exists():
            assert p.poll() is None, p.communicate()[1][-2000:]
            assert time.time() < deadline, "the download never reached the rename"
            time.sleep(0.05)
        tmp = Path(flag.read_text())
        assert tmp.stat().st_size == D.TINY_SHAKESPEARE_CHARS   # fully written and verified, not yet in place
        os.kill(p.pid, signal.SIGKILL); p.wait(timeout=30)
    finally:
        if p.poll() is None: p.kill(); p.wait()
    dest = cache/"tinyshakespeare"/"input.txt"
    assert not dest.exists(), "a killed download left input.txt behind"
    os.environ[D.CACHE_ENV], old = str(cache), os.environ.get(D.CACHE_ENV)
    saved_data = os.environ.pop(D.DATA_ENV, None)
    try:
        with pytest.raises(FileNotFoundError): D.find_tiny_shakespeare(download=False)   # the temp file is not taken for the dataset
        assert D.download_tiny_shakespeare(url=server) == dest and D.sha256_of(dest) == D.TINY_SHAKESPEARE_SHA256
    finally:
        if old is None: os.environ.pop(D.CACHE_ENV)
        else: os.environ[D.CACHE_ENV] = old
        if saved_data is not None: os.environ[D.DATA_ENV] = saved_data

def test_failed_write_leaves_nothing(tmp_path, server, monkeypatch):
    "An error while writing (disk full, say) leaves neither the dataset nor a temporary file."
    monkeypatch.setenv(D.CACHE_ENV, str(tmp_path/"cache"))
    def full(fd): raise OSError(28, "No space left on device")
    monkeypatch.setattr(D.os, "fsync", full)
    with pytest.raises(OSError, match="No space"): D.download_tiny_shakespeare(url=server)
    left = list((tmp_path/"cache").rglob("*"))
    assert all(p.is_dir() for p in left), f"left behind: {left}"

# ---------------------------------------------------------------- nothing else is downloaded
NET_MODULES = ("urllib", "http.client", "requests", "httpx", "socket", "huggingface_hub", "aiohttp", "ftplib")

def test_only_the_data_module_opens_connections():
    "Network code lives in data.py only; the Pythia loader reads local files unless the caller says otherwise."
    users = {}
    for f in MODULES:
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n == m or n.startswith(m + ".") for n in names for m in NET_MODULES): users.setdefault(f.name, []).append(names)
    assert set(users) <= {"data.py"}, f"modules that import network libraries: {users}"
    from dropout_residual import dynamics as Y
    for fn in (Y.load_neox, Y.pythia_convergence):
        assert inspect.signature(fn).parameters["local_files_only"].default is True, fn.__name__

def test_a_run_and_its_analysis_open_no_connection(tmp_path, monkeypatch):
    "Train (Tiny Shakespeare from the shared folder), load, sample, analyse, sweep: not one socket connects."
    tried = []
    def refuse(*a, **k):
        tried.append(a[1:] if len(a) > 1 else a); raise OSError("network disabled by test_safety")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setenv(D.CACHE_ENV, str(tmp_path/"cache"))
    from dropout_residual import cli, dynamics as Y
    from dropout_residual.sweep import sweep
    from dropout_residual.config import GPTConfig
    from dropout_residual.config import TrainConfig
    from dropout_residual.checkpoint import load_run
    from dropout_residual.train import train
    out = tmp_path/"run"
    train(GPTConfig.smoke(), TrainConfig.smoke(max_iters=4, device="cpu", analysis_ckpts=[0, 2, 4]), out_dir=out, progress=False)
    load_run(out)
    assert cli.main(["sample", "--run", str(out), "--tokens", "5"]) == 0
    Y.convergence(out, n_probe=4, progress=False, grads=False)
    sweep("paper2", "smoke", root=tmp_path/"runs", labels=["fixed"], device="cpu", progress=False)
    assert not tried, f"connections attempted: {tried}"
