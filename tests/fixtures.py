"""What the bad-input, fault and safety tests build on: a tiny corpus, tiny configs, one tiny finished run and one
tiny sweep (each made once per process), the command line run in this process, and private copies of the run or the
sweep for a test to damage. Test code only: none of this ships in the package."""
from __future__ import annotations
import contextlib, io, os, shutil, tempfile
from pathlib import Path

from dropout_residual.config import GPTConfig, TrainConfig
from dropout_residual.data import TokenData

TINY_TEXT = "".join(f"{i}: To be, or not to be, that is the question.\n" for i in range(120))

def tiny_data() -> TokenData:
    "A small `TokenData` (about 5,000 characters, no cache files): fast for bad-input cases."
    return TokenData.from_text(TINY_TEXT, cache=False, source="tiny")

def tiny_configs(model: dict|None = None, **train_kw) -> tuple[GPTConfig, TrainConfig]:
    "A tiny model (changed by `model`) and training config (changed by `train_kw`) for `tiny_data()`: seconds on a CPU."
    m = GPTConfig(**{**dict(block_size=16, vocab_size=tiny_data().vocab_size, n_layer=2, n_head=2, n_embd=16), **(model or {})})
    kw = dict(max_iters=8, batch_size=4, block_size=16, eval_interval=4, eval_iters=2, ckpt_interval=4,
              warmup_iters=2, lr_decay_iters=8, device="cpu", compile=False, analysis_ckpts=[0, 4, 8])
    kw.update(train_kw)
    return m, TrainConfig(**kw)

_CACHE: dict[str, Path] = {}

def tiny_run() -> Path:
    "The folder of one small finished run with analysis checkpoints at steps 0, 4, 8; trained once per process."
    if "run" not in _CACHE or not (_CACHE["run"]/"summary.json").exists():
        from dropout_residual.train import train
        d = Path(tempfile.mkdtemp(prefix="dropout_residual_tiny_run_"))/"run"
        m, t = tiny_configs()
        train(m, t, data=tiny_data(), out_dir=d, progress=False)
        _CACHE["run"] = d
    return _CACHE["run"]

def tiny_sweep() -> Path:
    "A results root holding one finished run of paper 2 (`fixed`, smoke preset); swept once per process."
    if "sweep" not in _CACHE or not (_CACHE["sweep"]/"paper2").is_dir():
        from dropout_residual.sweep import sweep
        d = Path(tempfile.mkdtemp(prefix="dropout_residual_tiny_sweep_"))/"runs"
        sweep("paper2", "smoke", root=d, labels=["fixed"], device="cpu", progress=False)
        _CACHE["sweep"] = d
    return _CACHE["sweep"]

class CLIError(Exception):
    "A `dropout-residual` command that exited non-zero; the message is its stderr."
    def __init__(self, code: int, stderr: str):
        super().__init__(f"exit {code}: {stderr.strip()}")
        self.code, self.stderr = code, stderr

def cli(*argv: str) -> int:
    "Run `dropout-residual *argv` in this process; raise `CLIError` (exit code, stderr) unless it exits 0."
    from dropout_residual.cli import main
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try: code = main(list(argv))
        except SystemExit as e: code = e.code if isinstance(e.code, int) else 2
    if code: raise CLIError(code, err.getvalue())
    return code

def corrupt(path, how: str = "truncate") -> Path:
    "Damage a file: `truncate` (keep the first half), `garbage` (random bytes), `empty`."
    path = Path(path); b = path.read_bytes()
    path.write_bytes({"truncate": b[:len(b) // 2], "garbage": os.urandom(max(64, len(b) // 4)), "empty": b""}[how])
    return path

def write(path, data: bytes|str) -> Path:
    "Write `data` (text as UTF-8) to `path`, making its folder."
    path = Path(path); path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path

def sweep_run(root) -> Path:
    "The one run folder of a copy of `tiny_sweep()`."
    return next(p for p in (Path(root)/"paper2").iterdir() if not p.name.startswith("_"))

def run_copy(ws, name: str = "run") -> Path:
    "A private copy of `tiny_run()` inside the scratch folder `ws`, to damage freely."
    return Path(shutil.copytree(tiny_run(), Path(ws)/name))

def sweep_copy(ws, name: str = "runs") -> Path:
    "A private copy of `tiny_sweep()` inside the scratch folder `ws`; `sweep_run(root)` is its one run folder."
    return Path(shutil.copytree(tiny_sweep(), Path(ws)/name))
