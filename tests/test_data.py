"End-to-end checks of the data pipeline: where the file comes from, checksums, offline errors, bad input."
import functools, http.server, os, shutil, subprocess, sys, threading
from pathlib import Path

import pytest, torch

from dropout_residual import data as D

SRC = Path(os.environ["DROPOUT_RESIDUAL_DATA"])/"tinyshakespeare"/"input.txt"

@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    "No data env var and an empty cache."
    monkeypatch.delenv(D.DATA_ENV, raising=False)
    monkeypatch.setenv(D.CACHE_ENV, str(tmp_path/"cache"))
    return tmp_path

def test_from_env_folder_and_file(clean_env, monkeypatch):
    monkeypatch.setenv(D.DATA_ENV, str(SRC.parent.parent))
    assert D.find_tiny_shakespeare(download=False) == SRC
    monkeypatch.setenv(D.DATA_ENV, str(SRC))
    assert len(D.tiny_shakespeare(download=False)) == D.TINY_SHAKESPEARE_CHARS
    flat = clean_env/"flat"; flat.mkdir(); shutil.copy(SRC, flat/"input.txt")
    monkeypatch.setenv(D.DATA_ENV, str(flat))
    assert D.find_tiny_shakespeare(download=False) == flat/"input.txt"

def test_explicit_path_wins(clean_env, monkeypatch):
    monkeypatch.setenv(D.DATA_ENV, "/nowhere")
    assert D.find_tiny_shakespeare(SRC, download=False) == SRC

def test_cache_is_used(clean_env):
    cached = D.cache_dir()/"tinyshakespeare"/"input.txt"
    cached.parent.mkdir(parents=True); shutil.copy(SRC, cached)
    assert D.find_tiny_shakespeare(download=False) == cached

def test_checksum_failure_on_modified_copy(clean_env):
    bad = clean_env/"input.txt"
    text = SRC.read_text(encoding="utf-8")
    bad.write_text(text[:-1] + ("!" if text[-1] != "!" else "?"), encoding="utf-8")  # same length, one char changed
    with pytest.raises(ValueError, match="sha256") as e: D.find_tiny_shakespeare(bad)
    assert str(bad) in str(e.value)

def test_offline_error_says_where_and_how(clean_env, monkeypatch):
    monkeypatch.setenv(D.DATA_ENV, str(clean_env/"missing"))
    with pytest.raises(FileNotFoundError) as e: D.find_tiny_shakespeare(download=False)
    msg = str(e.value)
    assert str(clean_env/"missing") in msg and "the cache" in msg and D.DATA_ENV in msg

def test_failed_download_is_reported(clean_env, monkeypatch):
    monkeypatch.setattr(D, "TINY_SHAKESPEARE_URL", "http://127.0.0.1:9/input.txt")
    def fail(*a, **k): raise OSError("network is unreachable")
    monkeypatch.setattr(D.urllib.request, "urlopen", fail)
    with pytest.raises(FileNotFoundError, match="download failed: network is unreachable"):
        D.find_tiny_shakespeare()

class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a): pass

@pytest.fixture
def local_server(tmp_path):
    "A real HTTP server on loopback serving a folder."
    root = tmp_path/"www"; root.mkdir()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    t = threading.Thread(target=srv.serve_forever, daemon=True); t.start()
    yield root, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()

def test_download_verifies_and_caches(clean_env, local_server):
    root, url = local_server
    shutil.copy(SRC, root/"input.txt")
    p = D.download_tiny_shakespeare(url=f"{url}/input.txt")
    assert p == D.cache_dir()/"tinyshakespeare"/"input.txt" and D.sha256_of(p) == D.TINY_SHAKESPEARE_SHA256
    assert D.find_tiny_shakespeare(download=False) == p

def test_download_with_wrong_checksum_writes_nothing(clean_env, local_server):
    root, url = local_server
    (root/"input.txt").write_text("not shakespeare")
    with pytest.raises(ValueError, match="sha256"): D.download_tiny_shakespeare(url=f"{url}/input.txt")
    assert not (D.cache_dir()/"tinyshakespeare").exists() or not any((D.cache_dir()/"tinyshakespeare").iterdir())

def test_tokenizer_round_trip_and_save(tmp_path):
    ds = D.shakespeare(download=False)
    assert ds.vocab_size == 65
    text = D.tiny_shakespeare(download=False)[:5000]
    assert ds.tokenizer.decode(ds.tokenizer.encode(text)) == text
    f = ds.tokenizer.save(tmp_path/"tok.json")
    assert D.CharTokenizer.load(f).chars == ds.tokenizer.chars
    (tmp_path/"bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json"): D.CharTokenizer.load(tmp_path/"bad.json")
    with pytest.raises(ValueError, match=r"'\u00e9' \(U\+00E9\) at position 3"): ds.tokenizer.encode("caf\u00e9")

def test_reproducible_batches_across_processes():
    "Same seed -> same batches, even in another process (no hidden global state)."
    ds = D.shakespeare(download=False)
    x, y = ds.get_batch("train", 8, 64, generator=torch.Generator().manual_seed(1337))
    code = ("import torch; from dropout_residual.data import shakespeare; ds = shakespeare(download=False); "
            "x, y = ds.get_batch('train', 8, 64, generator=torch.Generator().manual_seed(1337)); print(x.sum().item(), y.sum().item())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert [int(v) for v in out] == [x.sum().item(), y.sum().item()]
    x2, _ = ds.get_batch("train", 8, 64, generator=torch.Generator().manual_seed(1338))
    assert not torch.equal(x, x2)

def test_user_corpus(tmp_path):
    f = tmp_path/"mine.txt"; f.write_text("abcabcabd" * 50, encoding="utf-8")
    ds = D.TokenData.from_file(f)
    assert ds.vocab_size == 4 and len(ds.train) == 405 and len(ds.val) == 45
    x, y = ds.get_batch("val", 2, 10)
    assert x.shape == (2, 10)

@pytest.mark.parametrize("setup,exc,match", [
    (lambda p: p.write_bytes(b""), ValueError, "empty"),
    (lambda p: p.write_bytes(b"ok \xff\xfe bad"), ValueError, "offset 3"),
])
def test_bad_corpus_files(tmp_path, setup, exc, match):
    f = tmp_path/"c.txt"; setup(f)
    with pytest.raises(exc, match=match) as e: D.TokenData.from_file(f)
    assert str(f) in str(e.value)

@pytest.mark.parametrize("kw,match", [
    (dict(split="val", batch_size=2, block_size=10_000_000), "block_size=10000000"),
    (dict(split="train", batch_size=0, block_size=8), "batch_size=0"),
    (dict(split="train", batch_size=-3, block_size=8), "batch_size=-3"),
    (dict(split="train", batch_size=2, block_size=0), "block_size=0"),
    (dict(split="dev", batch_size=2, block_size=8), "split='dev'"),
])
def test_bad_batch_arguments(kw, match):
    ds = D.shakespeare(download=False)
    with pytest.raises(ValueError, match=match): ds.get_batch(**kw)

def test_cli_data_prints_statistics():
    out = subprocess.run(["dropout-residual", "data"], capture_output=True, text=True, check=True).stdout
    assert "vocab_size: 65" in out and "1003854" in out
    r = subprocess.run(["dropout-residual", "data", "--path", "/nonexistent/input.txt"], capture_output=True, text=True)
    assert r.returncode == 2 and "/nonexistent/input.txt" in r.stderr
