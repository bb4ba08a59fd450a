"""Every bad input we know of, as code: what each case does, the exception it must raise and the text its message
must contain (`{ws}` stands for the case's scratch folder). `tests/test_bad_input.py` runs each case; the docs page
`19_reliability` renders this list as its table. Test code only: none of this ships in the package."""
from __future__ import annotations
import ast, inspect, os, shutil, textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from dropout_residual.checkpoint import CheckpointError, load_checkpoint, load_run, save_checkpoint
from dropout_residual.config import GPTConfig, TrainConfig, apply_overrides
from dropout_residual.data import CharTokenizer, TokenData
from dropout_residual.dynamics import convergence, linear_cka, make_probe
from dropout_residual.model import GPT
from dropout_residual.papers import experiment_runs
from dropout_residual.schedules import ConstantDropout, CosineLR, schedule_from_dict, schedule_from_spec
from dropout_residual.store import load_histories, load_runs, prepare_run
from dropout_residual.sweep import sweep
from dropout_residual.train import train
from dropout_residual.utils import read_json, write_json
from fixtures import TINY_TEXT, CLIError, cli, corrupt, run_copy, sweep_copy, sweep_run, tiny_configs, tiny_data, write

@dataclass(frozen=True)
class Case:
    "One bad input: what is done (`setup(ws)`, then `do(ws)`), the exception it must raise, text its message must contain."
    id: str
    area: str                          # config, data, checkpoint, schedule, sweep, analysis, cli
    error: type                        # the exception type expected (a subclass also passes)
    match: str                         # text the message must contain; `{ws}` is the scratch folder
    do: Callable[[Path], object]       # the call that must raise
    setup: Callable[[Path], object]|None = None   # what sets the scene first (it must not raise)
    exit_code: int|None = None         # for a command-line case, the exit status `CLIError` must carry

    def fragment(self, ws) -> str:
        "The text the message must contain, with `{ws}` filled in."
        return self.match.replace("{ws}", str(ws))

    def code(self) -> str:
        "What the case does, as its source: the setup's body, then the call."
        fn = ast.parse(textwrap.dedent(inspect.getsource(self.do))).body[0]
        done = [ast.unparse(s) for s in fn.body]
        if self.setup is not None:
            kw = next(k.value for k in fn.decorator_list[0].keywords if k.arg == "setup")
            done.insert(0, ast.unparse(kw.body) if isinstance(kw, ast.Lambda) else f"{ast.unparse(kw)}(ws)")
        return "; ".join(done)

CASES: list[Case] = []

def case(id: str, area: str, error: type, match: str, setup=None, exit_code: int|None = None):
    "Add the decorated function to `CASES` as the call of one bad input."
    def add(do):
        CASES.append(Case(id, area, error, match, do, setup, exit_code))
        return do
    return add

class Evil:
    "An object whose unpickling runs code: what a malicious checkpoint would hold (`ckpt-pickled-code`)."
    def __reduce__(self): return (os.system, ("echo unpickled-code-ran",))

def smoke_fixed():
    "The spec of paper 2's `fixed` run, smoke preset."
    return experiment_runs('paper2', 'smoke', labels=['fixed'])[0]

def another_config_same_id(ws: Path):
    "Prepare `smoke_fixed()` in `ws`, then give its run.json another model config under the same run id."
    f = prepare_run(smoke_fixed(), ws); meta = read_json(f/'run.json')
    meta['config']['model']['n_embd'] = 48; write_json(f/'run.json', meta)

# ---------------------------------------------------------------- model config
@case('cfg-n_head-divides', 'config', ValueError, 'n_head=5')
def _(ws): GPTConfig(n_head=5, n_embd=64)

@case('cfg-n_layer-zero', 'config', ValueError, 'n_layer=0')
def _(ws): GPTConfig(n_layer=0)

@case('cfg-dropout-above-one', 'config', ValueError, 'attn_dropout=1.5')
def _(ws): GPTConfig(attn_dropout=1.5)

@case('cfg-member-rates-count', 'config', ValueError, 'mlp_dropout')
def _(ws): GPTConfig(n_members=2, mlp_dropout=(0.1, 0.2, 0.3))

@case('cfg-skip-not-dividing', 'config', ValueError, 'k=4')
def _(ws): GPTConfig(n_layer=6, skips=(4,))

@case('cfg-skip-mode', 'config', ValueError, "skip_mode='concat'")
def _(ws): GPTConfig(skip_mode='concat')

@case('cfg-unknown-field', 'config', ValueError, 'n_embed')
def _(ws): GPTConfig.from_dict({**GPTConfig().to_dict(), 'n_embed': 64})

@case('model-dropout-site', 'config', ValueError, "'mpl'")
def _(ws): GPT(GPTConfig.smoke()).set_dropout('mpl', 0.1)

@case('model-dropout-rates-count', 'config', ValueError, 'n_members=2')
def _(ws): GPT(GPTConfig.smoke(n_members=2)).set_dropout('attn', [0.1, 0.2, 0.3])

@case('model-context-too-long', 'config', ValueError, 'block_size=32')
def _(ws): GPT(GPTConfig.smoke())(torch.zeros(1, 33, dtype=torch.long))

@case('model-token-outside-vocab', 'config', ValueError, 'vocab_size=65')
def _(ws): GPT(GPTConfig.smoke())(torch.full((1, 4), 99))

# ---------------------------------------------------------------- training config
@case('train-batch-zero', 'config', ValueError, 'batch_size=0')
def _(ws): TrainConfig(batch_size=0)

@case('train-min-lr-above-lr', 'config', ValueError, 'min_lr=0.001')
def _(ws): TrainConfig(lr=1e-4, min_lr=1e-3)

@case('train-beta2-one', 'config', ValueError, 'beta2=1.0')
def _(ws): TrainConfig(beta2=1.0)

@case('train-dtype-float16', 'config', ValueError, "dtype='float16'")
def _(ws): TrainConfig(dtype='float16')

@case('train-device-unknown', 'config', ValueError, "device='tpu'")
def _(ws): TrainConfig(device='tpu')

@case('train-analysis-step-past-end', 'config', ValueError, 'analysis_ckpts')
def _(ws): TrainConfig(max_iters=10, analysis_ckpts=[0, 20])

@case('train-unknown-field', 'config', ValueError, "'max_iter'")
def _(ws): TrainConfig.from_dict({'max_iter': 3})

@case('train-seeds-vs-members', 'config', ValueError, 'n_members=3')
def _(ws): train(*tiny_configs(model=dict(n_members=3), seed=[1, 2]), data=tiny_data())

@case('train-block-above-model', 'config', ValueError, 'block_size=64')
def _(ws): train(*tiny_configs(block_size=64), data=tiny_data())

# ---------------------------------------------------------------- data
@case('data-empty-file', 'data', ValueError, '{ws}/empty.txt')
def _(ws): TokenData.from_file(write(ws/'empty.txt', b''))

@case('data-not-utf8', 'data', ValueError, '{ws}/latin1.txt')
def _(ws): TokenData.from_file(write(ws/'latin1.txt', 'caf\xe9'.encode('latin-1')))

@case('data-missing-file', 'data', FileNotFoundError, '{ws}/nope.txt')
def _(ws): TokenData.from_file(ws/'nope.txt')

@case('data-batch-zero', 'data', ValueError, 'batch_size=0')
def _(ws): tiny_data().get_batch('train', 0, 8)

@case('data-block-too-large', 'data', ValueError, 'block_size=100000')
def _(ws): tiny_data().get_batch('val', 2, 100_000)

@case('data-block-above-corpus', 'data', ValueError, 'block_size=1024')
def _(ws): train(*tiny_configs(model=dict(block_size=1024), block_size=1024), data=tiny_data())

@case('data-vocab-above-model', 'data', ValueError, 'vocab_size=10')
def _(ws): train(*tiny_configs(model=dict(vocab_size=10)), data=tiny_data())

@case('data-corrupt-tokenizer', 'data', ValueError, '{ws}/tokenizer.json')
def _(ws): CharTokenizer.load(write(ws/'tokenizer.json', '{"chars": '))

# ---------------------------------------------------------------- checkpoints and run files
@case('ckpt-truncated-resume', 'checkpoint', ValueError, '{ws}/run/ckpt.pt',
      setup=lambda ws: corrupt(run_copy(ws)/'ckpt.pt'))
def _(ws): train(*tiny_configs(), data=tiny_data(), out_dir=ws/'run')

@case('ckpt-garbage-load-run', 'checkpoint', ValueError, '{ws}/run/ckpt.pt',
      setup=lambda ws: corrupt(run_copy(ws)/'ckpt.pt', 'garbage'))
def _(ws): load_run(ws/'run')

def no_model_config_other_width(ws):
    "A copy of the tiny run whose ckpt.pt lacks model_config (an older file) and whose config.json says another width."
    f = run_copy(ws); edit_ckpt(f/'ckpt.pt', lambda st: st.pop('model_config', None))
    c = read_json(f/'config.json'); write_json(f/'config.json', {**c, 'model': {**c['model'], 'n_embd': 2 * c['model']['n_embd']}})

@case('ckpt-without-model-config-other-shapes', 'checkpoint', ValueError,
      '{ws}/run/ckpt.pt does not fit the model {ws}/run/config.json describes (size mismatch', setup=no_model_config_other_width)
def _(ws): load_run(ws/'run')

@case('ckpt-empty', 'checkpoint', ValueError, '{ws}/run/ckpt.pt',
      setup=lambda ws: corrupt(run_copy(ws)/'ckpt.pt', 'empty'))
def _(ws): load_checkpoint(ws/'run'/'ckpt.pt')

@case('ckpt-missing', 'checkpoint', FileNotFoundError, '{ws}/run/ckpt.pt',
      setup=lambda ws: (run_copy(ws)/'ckpt.pt').unlink())
def _(ws): load_run(ws/'run')

@case('ckpt-pickled-code', 'checkpoint', ValueError, '{ws}/run/ckpt.pt',
      setup=lambda ws: torch.save({'model': Evil()}, run_copy(ws)/'ckpt.pt'))
def _(ws): load_run(ws/'run')

@case('ckpt-other-config', 'checkpoint', ValueError, 'n_embd')
def _(ws): train(*tiny_configs(model=dict(n_embd=32)), data=tiny_data(), out_dir=run_copy(ws))

@case('ckpt-resume-other-corpus', 'checkpoint', ValueError, 'tokenizer')
def _(ws):
    train(*tiny_configs(max_iters=12), data=TokenData.from_text(TINY_TEXT.upper(), cache=False), out_dir=run_copy(ws))

@case('run-config-json-corrupt', 'checkpoint', ValueError, '{ws}/run/config.json',
      setup=lambda ws: corrupt(run_copy(ws)/'config.json'))
def _(ws): load_run(ws/'run')

@case('run-tokenizer-corrupt', 'checkpoint', ValueError, '{ws}/run/tokenizer.json',
      setup=lambda ws: corrupt(run_copy(ws)/'tokenizer.json'))
def _(ws): load_run(ws/'run')

@case('run-out-dir-is-a-file', 'checkpoint', OSError, '{ws}/taken')
def _(ws): train(*tiny_configs(), data=tiny_data(), out_dir=write(ws/'taken', 'x'))

@case('run-not-a-run-folder', 'checkpoint', FileNotFoundError, '{ws}/config.json')
def _(ws): load_run(ws)

# ---------------------------------------------------------------- schedules
@case('schedule-unknown-kind', 'schedule', ValueError, "'liner'")
def _(ws): schedule_from_spec('liner:p0=0.2')

@case('schedule-unknown-param', 'schedule', ValueError, "'p'")
def _(ws): schedule_from_spec('linear:p=0.2')

@case('schedule-rate-above-one', 'schedule', ValueError, 'p0=1.5')
def _(ws): schedule_from_spec('linear:p0=1.5')

@case('schedule-not-a-number', 'schedule', ValueError, "p0='abc'")
def _(ws): schedule_from_spec('linear:p0=abc')

@case('schedule-unknown-site', 'schedule', ValueError, "'mpl'")
def _(ws): schedule_from_spec('constant:sites=attn+mpl')

@case('schedule-dict-no-kind', 'schedule', ValueError, "'kind'")
def _(ws): schedule_from_dict({'p': 0.2})

@case('schedule-count-vs-members', 'schedule', ValueError, 'n_members=2')
def _(ws): train(*tiny_configs(model=dict(n_members=2)), data=tiny_data(), schedules=[ConstantDropout(0.1)] * 3)

@case('lr-decay-before-warmup', 'schedule', ValueError, 'lr_decay_iters=10')
def _(ws): CosineLR(1e-3, 1e-4, warmup_iters=100, lr_decay_iters=10)

# ---------------------------------------------------------------- sweeps and the run store
@case('sweep-unknown-experiment', 'sweep', ValueError, "'paper4'")
def _(ws): sweep('paper4', root=ws)

@case('sweep-unknown-preset', 'sweep', ValueError, "'medium'")
def _(ws): experiment_runs('paper1', 'medium')

@case('sweep-unknown-config-key', 'sweep', ValueError, "'n_embed'")
def _(ws): experiment_runs('paper2', 'smoke', overrides={'n_embed': 64})

@case('sweep-seed-override', 'sweep', ValueError, "'seed'")
def _(ws): experiment_runs('paper2', 'smoke', overrides={'seed': 3})

@case('sweep-zero-seeds', 'sweep', ValueError, 'seeds=0')
def _(ws): experiment_runs('paper2', 'smoke', seeds=0)

@case('sweep-unknown-label', 'sweep', ValueError, "'linaer'")
def _(ws): experiment_runs('paper2', 'smoke', labels=['linaer'])

@case('sweep-unknown-executor', 'sweep', ValueError, "'slurm'")
def _(ws): sweep('paper2', executor='slurm', root=ws)

@case('sweep-hash-collision', 'sweep', ValueError, '{ws}/paper2/',
      setup=lambda ws: another_config_same_id(ws))
def _(ws): prepare_run(smoke_fixed(), ws)

@case('sweep-run-json-corrupt', 'sweep', ValueError, 'run.json',
      setup=lambda ws: corrupt(sweep_run(sweep_copy(ws))/'run.json'))
def _(ws): load_runs(ws/'runs')

@case('sweep-summary-corrupt', 'sweep', ValueError, 'summary.json',
      setup=lambda ws: corrupt(sweep_run(sweep_copy(ws))/'summary.json'))
def _(ws): load_runs(ws/'runs')

@case('sweep-history-truncated', 'sweep', ValueError, 'history.csv',
      setup=lambda ws: corrupt(sweep_run(sweep_copy(ws))/'history.csv'))
def _(ws): load_histories(load_runs(ws/'runs'))

@case('sweep-history-empty', 'sweep', ValueError, 'history.csv',
      setup=lambda ws: corrupt(sweep_run(sweep_copy(ws))/'history.csv', 'empty'))
def _(ws): load_histories(load_runs(ws/'runs'))

# ---------------------------------------------------------------- analysis
@case('analysis-no-checkpoints', 'analysis', FileNotFoundError, '{ws}/run/analysis',
      setup=lambda ws: shutil.rmtree(run_copy(ws)/'analysis'))
def _(ws): convergence(ws/'run', data=tiny_data())

@case('analysis-probe-too-short', 'analysis', ValueError, 'block_size+1=17')
def _(ws): convergence(run_copy(ws), probe=torch.zeros(8, 5, dtype=torch.long), data=tiny_data())

@case('analysis-mismatched-checkpoint', 'analysis', ValueError, '{ws}/run/analysis/step_0000004.pt',
      setup=lambda ws: save_checkpoint(run_copy(ws)/'analysis'/'step_0000004.pt',
                                      {'model': GPT(GPTConfig.smoke()).state_dict(), 'step': 4}))
def _(ws): convergence(ws/'run', data=tiny_data())

@case('analysis-truncated-checkpoint', 'analysis', ValueError, '{ws}/run/analysis/step_0000004.pt',
      setup=lambda ws: corrupt(run_copy(ws)/'analysis'/'step_0000004.pt'))
def _(ws): convergence(ws/'run', data=tiny_data())

@case('analysis-probe-too-few', 'analysis', ValueError, 'n=2')
def _(ws): make_probe(tiny_data(), n=2, block_size=8)

@case('analysis-cka-row-counts', 'analysis', ValueError, '10 rows')
def _(ws): linear_cka(torch.randn(10, 4), torch.randn(9, 4))

# ---------------------------------------------------------------- the command line
@case('cli-unknown-preset', 'cli', CLIError, "'nope'", exit_code=2)
def _(ws): cli('train', '--preset', 'nope', '--out', str(ws/'r'))

@case('cli-unknown-key', 'cli', CLIError, "'n_embed'", exit_code=2)
def _(ws): cli('train', '--preset', 'smoke', '--set', 'n_embed=64', '--out', str(ws/'r'))

@case('cli-bad-value', 'cli', CLIError, 'lr=-1', exit_code=2)
def _(ws): cli('train', '--preset', 'smoke', '--set', 'lr=-1', '--out', str(ws/'r'))

@case('cli-set-without-value', 'cli', CLIError, 'key=value', exit_code=2)
def _(ws): cli('train', '--preset', 'smoke', '--set', 'lr', '--out', str(ws/'r'))

@case('cli-bad-schedule', 'cli', CLIError, "'liner'", exit_code=2)
def _(ws): cli('train', '--preset', 'smoke', '--schedule', 'liner', '--out', str(ws/'r'), '--quiet')

@case('cli-empty-corpus', 'cli', CLIError, '{ws}/e.txt', exit_code=2)
def _(ws): cli('train', '--preset', 'smoke', '--corpus', str(write(ws/'e.txt', b'')), '--out', str(ws/'r'), '--quiet')

@case('cli-sample-missing-run', 'cli', CLIError, '{ws}/nope', exit_code=2)
def _(ws): cli('sample', '--run', str(ws/'nope'))

@case('cli-sample-member-range', 'cli', CLIError, '--member 3', exit_code=2)
def _(ws): cli('sample', '--run', str(run_copy(ws)), '--member', '3')

@case('cli-sweep-unknown-experiment', 'cli', CLIError, 'paper4', exit_code=2)
def _(ws): cli('sweep', 'paper4', '--runs', str(ws))

@case('cli-sweep-unknown-preset', 'cli', CLIError, 'medium', exit_code=2)
def _(ws): cli('sweep', 'paper2', '--preset', 'medium', '--runs', str(ws))

# ---------------------------------------------------------------- what a run folder says is what made it
import struct, zipfile
from dropout_residual.checkpoint import RunBusyError, RunFolder

def flip_bit(path, entry: str = "archive/data/0", byte: int = 3, bit: int = 6) -> Path:
    "Flip one bit (by default an exponent bit of the first float32) of a tensor stored in a checkpoint; the zip stays intact."
    with zipfile.ZipFile(path) as z: info = next(i for i in z.infolist() if i.filename.endswith(entry))
    raw = bytearray(Path(path).read_bytes())
    n, m = struct.unpack("<HH", raw[info.header_offset + 26: info.header_offset + 30])  # local header: name, extra lengths
    raw[info.header_offset + 30 + n + m + byte] ^= 1 << bit
    Path(path).write_bytes(bytes(raw))
    return Path(path)

def edit_ckpt(path, edit) -> Path:
    "Load a checkpoint, apply `edit(state)`, save it again (with fresh digests): a consistent file that says something else."
    st = load_checkpoint(path); edit(st); save_checkpoint(path, st)
    return Path(path)

def unfinished_follows(ws):
    "A copy of the tiny run rewritten as stopped at step 4 of 8, with lr_decay_iters following max_iters."
    edit_ckpt(run_copy(ws)/'ckpt.pt', lambda st: (st.update(step=4), st['train_config'].update(lr_decay_iters=None)))

def nan_weights(ws):
    "A copy of the tiny run whose ckpt.pt holds a NaN in its token embedding (a consistent, digested file)."
    edit_ckpt(run_copy(ws)/'ckpt.pt', lambda st: st['model']['wte.weight'].view(-1)[0].fill_(float('nan')))

def overflowing_weights(ws):
    "A copy of the tiny run with one finite but huge weight (3e38, as a flipped exponent bit makes; a consistent, digested file)."
    edit_ckpt(run_copy(ws)/'ckpt.pt', lambda st: st['model']['wte.weight'].view(-1)[0].fill_(3e38))

def ckpt_is_a_folder(ws):
    "A copy of the tiny run whose ckpt.pt is a directory."
    p = run_copy(ws)/'ckpt.pt'; p.unlink(); p.mkdir()

@case('ckpt-flipped-bit', 'checkpoint', ValueError, '{ws}/run/ckpt.pt is damaged: tensor model/',
      setup=lambda ws: flip_bit(run_copy(ws)/'ckpt.pt'))
def _(ws): load_run(ws/'run')

@case('run-config-disagrees-with-ckpt', 'checkpoint', ValueError,
      '{ws}/run/config.json and {ws}/run/ckpt.pt disagree on model.attn_dropout',
      setup=lambda ws: write_json(run_copy(ws)/'config.json', {**(c := read_json(ws/'run'/'config.json')), 'model': {**c['model'], 'attn_dropout': 0.25}}))
def _(ws): load_run(ws/'run')

@case('resume-shrinks-max-iters', 'checkpoint', ValueError, 'max_iters=8 (step 8), now max_iters=4: a finished run cannot shrink')
def _(ws): train(*tiny_configs(max_iters=4, analysis_ckpts=[0, 4]), data=tiny_data(), out_dir=run_copy(ws), progress=False)

@case('resume-grows-finished-run', 'checkpoint', ValueError, 'max_iters=8 (step 8), now max_iters=12: a finished run cannot grow')
def _(ws): train(*tiny_configs(max_iters=12), data=tiny_data(), out_dir=run_copy(ws), progress=False)

@case('resume-grows-following-lr-decay', 'checkpoint', ValueError, 'cannot grow while lr_decay_iters follows max_iters',
      setup=unfinished_follows)
def _(ws): train(*tiny_configs(max_iters=12, lr_decay_iters=None), data=tiny_data(), out_dir=ws/'run', progress=False)

@case('resume-other-corpus-same-chars', 'checkpoint', ValueError, "was trained on another corpus: it records 'tiny'")
def _(ws):
    train(*tiny_configs(), data=TokenData.from_text(TINY_TEXT[::-1], cache=False, source='reversed'), out_dir=run_copy(ws), progress=False)

@case('ckpt-is-a-directory', 'checkpoint', ValueError, '{ws}/run/ckpt.pt is a directory', setup=ckpt_is_a_folder)
def _(ws): train(*tiny_configs(), data=tiny_data(), out_dir=ws/'run', progress=False)

@case('run-folder-busy', 'checkpoint', RunBusyError, 'run folder {ws}/r is being trained by another process')
def _(ws):
    with RunFolder(ws/'r').lock(): train(*tiny_configs(), data=tiny_data(), out_dir=ws/'r', progress=False)

@case('cli-train-busy', 'cli', CLIError, 'is being trained by another process', exit_code=75)
def _(ws):
    with RunFolder(ws/'r').lock(): cli('train', '--preset', 'smoke', '--out', str(ws/'r'), '--quiet')

@case('cli-sample-nan-weights', 'cli', CLIError, 'ckpt.pt holds non-finite weights (NaN or inf) in tensor wte.weight',
      setup=nan_weights, exit_code=2)
def _(ws): cli('sample', '--run', str(ws/'run'))

@case('cli-sample-overflowing-weights', 'cli', CLIError, "run {ws}/run: the model's next-token probabilities are not finite",
      setup=overflowing_weights, exit_code=2)
def _(ws): cli('sample', '--run', str(ws/'run'))
# ---------------------------------------------------------------- reliability round 2: silent wrong results, one-line failures
def summary_member(ws: Path, **change):
    "Copy `tiny_sweep()` into `ws` and change its run's summary.json: `members=[]`, or fields of its first member."
    f = sweep_run(sweep_copy(ws)); s = read_json(f/'summary.json')
    if 'members' in change: s['members'] = change['members']
    else: s['members'][0].update(change)
    write_json(f/'summary.json', s)

def edit_run_json(ws: Path, **change):
    "Copy `tiny_sweep()` into `ws` and edit its run's run.json by hand (what the tables read beside the config)."
    f = sweep_run(sweep_copy(ws)); write_json(f/'run.json', {**read_json(f/'run.json'), **change})

@case('cfg-set-bool-word', 'config', ValueError, "bias='maybe' must be a boolean")
def _(ws): apply_overrides(GPTConfig(), TrainConfig(), ['bias=maybe'])

@case('cli-set-int-text', 'cli', CLIError, "max_iters='abc'", exit_code=2)
def _(ws): cli('train', '--preset', 'smoke', '--set', 'max_iters=abc', '--out', str(ws/'r'))

@case('cli-seed-too-large', 'cli', CLIError, 'seed=', exit_code=2)
def _(ws): cli('train', '--preset', 'smoke', '--set', 'seed=99999999999999999999', '--out', str(ws/'r'))

@case('cli-device-malformed', 'cli', CLIError, "device='cuda:abc'", exit_code=2)
def _(ws): cli('train', '--preset', 'smoke', '--device', 'cuda:abc', '--out', str(ws/'r'))

@case('cli-device-mps-absent', 'cli', CLIError, "device='mps'", exit_code=2)
def _(ws): cli('sweep', 'paper2', '--device', 'mps', '--runs', str(ws))

@case('cli-data-corpus-no-path', 'cli', CLIError, '--corpus needs --path', exit_code=2)
def _(ws): cli('data', '--corpus')

@case('cli-bench-steps-zero', 'cli', CLIError, '--steps 0 must be >= 1', exit_code=2)
def _(ws): cli('bench', 'train', '--shape', 'smoke', '--steps', '0')

@case('cli-out-empty', 'cli', CLIError, '--out is empty', exit_code=2)
def _(ws): cli('train', '--preset', 'smoke', '--out', '')

@case('cli-set-out-dir', 'cli', CLIError, '--set out_dir', exit_code=2)
def _(ws): cli('train', '--preset', 'smoke', '--set', f'out_dir={ws}/x', '--out', str(ws/'y'))

@case('cli-out-name-too-long', 'cli', CLIError, 'use a shorter path', exit_code=74)
def _(ws): cli('train', '--preset', 'smoke', '--set', 'max_iters=1', '--out', str(ws/('a' * 300)), '--quiet')

@case('cli-out-cannot-exist', 'cli', CLIError, 'cannot write or read /proc/dropout_residual_x: No such file or directory; the path or a folder', exit_code=2)
def _(ws): cli('train', '--preset', 'smoke', '--set', 'max_iters=1', '--out', '/proc/dropout_residual_x', '--quiet')

@case('cli-runs-under-a-file', 'cli', CLIError, '{ws}/f', exit_code=74,
      setup=lambda ws: write(ws/'f', 'x'))
def _(ws): cli('sweep', 'paper2', '--label', 'fixed', '--runs', str(ws/'f'/'runs'), '--device', 'cpu', '--quiet')

@case('data-one-char-corpus', 'data', ValueError, 'too few for any block_size')
def _(ws): TokenData.from_text('a', cache=False).get_batch('train', 1, 1)

@case('sweep-summary-no-members', 'sweep', ValueError, 'has no members',
      setup=lambda ws: summary_member(ws, members=[]))
def _(ws): load_runs(ws/'runs')

@case('sweep-summary-wrong-type', 'sweep', ValueError, "members[0].best_val_loss='low' is not a number",
      setup=lambda ws: summary_member(ws, best_val_loss='low'))
def _(ws): load_runs(ws/'runs')

@case('sweep-run-json-label-edited', 'sweep', ValueError, "label='adaptive'",
      setup=lambda ws: edit_run_json(ws, label='adaptive'))
def _(ws): load_runs(ws/'runs')

@case('sweep-run-json-label-edited-no-identity', 'sweep', ValueError, "label='adaptive'",
      setup=lambda ws: edit_run_json(ws, label='adaptive', identity=None))
def _(ws): load_runs(ws/'runs')

@case('sweep-summary-number-edited', 'sweep', ValueError, 'its digest does not match its numbers',
      setup=lambda ws: summary_member(ws, best_val_loss=0.5))
def _(ws): load_runs(ws/'runs')

@case('sweep-run-json-seed-edited', 'sweep', ValueError, 'seed=5',
      setup=lambda ws: edit_run_json(ws, seed=5))
def _(ws): load_runs(ws/'runs')

@case('run-config-not-a-mapping', 'checkpoint', ValueError, "{ws}/run/config.json is not a run's config: it has no 'model' or 'train' mapping",
      setup=lambda ws: (run_copy(ws)/'config.json').write_text('[1, 2]'))
def _(ws): load_run(ws/'run')

@case('run-config-lacks-model', 'checkpoint', ValueError, "{ws}/run/config.json is not a run's config: it has no 'model' mapping",
      setup=lambda ws: (run_copy(ws)/'config.json').write_text('{"train": {}}'))
def _(ws): load_run(ws/'run')

@case('ckpt-lacks-model', 'checkpoint', CheckpointError, "checkpoint {ws}/run/ckpt.pt has no 'model'",
      setup=lambda ws: edit_ckpt(run_copy(ws)/'ckpt.pt', lambda st: st.pop('model')))
def _(ws): load_run(ws/'run')
