"""Stopping a run with a flag instead of a signal: `train(stop=...)` checkpoints at the step boundary and resumes bitwise;
the panel's Stop button, pressed from another thread while `on_run` trains (as ipykernel 7 runs a second Run press on a
subshell thread), and Kernel > Interrupt's SIGINT on the main thread both stop it there, and Run resumes it exactly."""
import os, signal, threading, time
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import pandas as pd, pytest, torch

from dropout_residual import train as T, widgets
from dropout_residual.checkpoint import load_checkpoint
from dropout_residual.widgets import ExperimentPanel
from fixtures import tiny_configs, tiny_data

TIMING = ["tokens_per_s", "time_s"]
WAIT_S = 120                       # bounds every wait: a stuck run fails the test instead of hanging it


def _hold_step(monkeypatch, k: int):
    "Make training step k (1-based) tell `reached` and wait for `go` before it returns; returns (reached, go)."
    reached, go, calls, orig = threading.Event(), threading.Event(), {"n": 0}, T.train_step
    def train_step(*a, **kw):
        out = orig(*a, **kw)
        calls["n"] += 1
        if calls["n"] == k:
            reached.set()
            assert go.wait(WAIT_S), "the test never released the step"
        return out
    monkeypatch.setattr(T, "train_step", train_step)
    return reached, go


def _tiny():
    return tiny_configs(model=dict(embd_dropout=0.1, attn_dropout=0.1), ckpt_interval=None, log_interval=1)


def test_stop_flag_checkpoints_at_the_step_boundary_and_resumes_bitwise(tmp_path, monkeypatch):
    m, t = _tiny()
    ds = tiny_data()
    straight = T.train(m, t, ds, out_dir=tmp_path/"straight", progress=False)
    stop = threading.Event()
    reached, go = _hold_step(monkeypatch, 3)
    setter = threading.Thread(target=lambda: reached.wait(WAIT_S) and (stop.set(), go.set()))
    setter.start()
    with pytest.raises(KeyboardInterrupt): T.train(m, t, ds, out_dir=tmp_path/"run", progress=False, stop=stop)
    setter.join(WAIT_S)
    monkeypatch.undo()
    ck = load_checkpoint(tmp_path/"run"/"ckpt.pt")
    assert (ck["kind"], ck["step"]) == ("interrupt", 3)          # the step under way finished, then the checkpoint
    assert not (tmp_path/"run"/"summary.json").exists()
    assert pd.read_csv(tmp_path/"run"/"history.csv").step.max() == 2
    resumed = T.train(m, t, ds, out_dir=tmp_path/"run", progress=False, stop=threading.Event())
    sa, sb = straight.model.state_dict(), resumed.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    pd.testing.assert_frame_equal(straight.history.drop(columns=TIMING), resumed.history.drop(columns=TIMING))


def _panel(root):
    return ExperimentPanel("paper2", preset="smoke", labels=["fixed"], root=root, progress=False, device="cpu")


def _on_run_in_a_thread(panel):
    "Press Run the way ipykernel 7 does from the second press on: the callback on another thread."
    out = {}
    th = threading.Thread(target=lambda: out.setdefault("result", panel.on_run()), daemon=True)
    th.start()
    return th, out


def _assert_stopped_then_resumes_exactly(panel, th, out, tmp_path):
    th.join(WAIT_S)
    assert not th.is_alive(), "the run did not stop"
    assert out["result"] is None and "stopped:" in panel.status.value and "press Run to resume" in panel.status.value
    assert panel.stop_button.disabled and not panel.run_button.disabled
    (ck,) = (tmp_path/"runs"/"paper2"/"_groups").glob("*/ckpt.pt")
    c = load_checkpoint(ck)
    assert (c["kind"], c["step"]) == ("interrupt", 2)
    res = panel.on_run()                                          # Run again: resumes the checkpoint
    ref = _panel(tmp_path/"ref").on_run()                         # the same run, never stopped
    assert res.trained == 1 and list(res.runs.run_id) == list(ref.runs.run_id)
    rid = res.runs.run_id[0]
    a, b = (load_checkpoint(tmp_path/r/"paper2"/rid/"ckpt.pt")["model"] for r in ("runs", "ref"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ha, hb = (pd.read_csv(tmp_path/r/"paper2"/rid/"history.csv").drop(columns=TIMING) for r in ("runs", "ref"))
    pd.testing.assert_frame_equal(ha, hb)


def test_stop_button_from_another_thread_stops_at_a_step_boundary(tmp_path, monkeypatch):
    panel = _panel(tmp_path/"runs")
    assert panel.stop_button.disabled                             # enabled only while running
    reached, go = _hold_step(monkeypatch, 2)
    th, out = _on_run_in_a_thread(panel)
    assert reached.wait(WAIT_S)
    assert not panel.stop_button.disabled and panel.run_button.disabled
    panel.stop_button.click()                                     # the button's handler, on this (another) thread
    assert "stopping" in panel.status.value
    go.set()
    th.join(WAIT_S)
    monkeypatch.undo()
    _assert_stopped_then_resumes_exactly(panel, th, out, tmp_path)


def test_kernel_interrupt_reaches_a_run_on_another_thread(tmp_path, monkeypatch):
    "Kernel > Interrupt is a SIGINT, handled on the main thread: the handler the panel installed there sets the run's flag."
    before = signal.getsignal(signal.SIGINT)
    try:
        assert widgets.forward_interrupts()                       # what building the panel does in a live kernel
        panel = _panel(tmp_path/"runs")
        reached, go = _hold_step(monkeypatch, 2)
        th, out = _on_run_in_a_thread(panel)
        assert reached.wait(WAIT_S)
        os.kill(os.getpid(), signal.SIGINT)                       # delivered to this, the main thread: no KeyboardInterrupt here
        go.set()
        th.join(WAIT_S)
    finally:
        signal.signal(signal.SIGINT, before)
    monkeypatch.undo()
    _assert_stopped_then_resumes_exactly(panel, th, out, tmp_path)


KERNEL_SETUP = """
import threading, time, torch
from pathlib import Path
from dropout_residual import train as T
from dropout_residual.widgets import ExperimentPanel
torch.set_num_threads(1)
panel = ExperimentPanel("paper2", preset="smoke", labels=["fixed"], root={root!r}, progress=False, device="cpu")
panel.on_run()                                   # the first press, on the main shell: trains 'fixed'
_orig, _n = T.train_step, [0]
def _slow_step(*a, **k):                         # slow steps, so that the interrupt lands mid-run
    out = _orig(*a, **k); _n[0] += 1
    if _n[0] == 2: Path({marker!r}).touch()
    time.sleep(0.5); return out
T.train_step = _slow_step
panel.configs.value = ("linear",)
print("ready", panel.status.value)
"""


def _kernel_execute(kc, code: str, subshell_id: str|None = None, timeout: float = WAIT_S) -> dict:
    "Send an execute_request (to a subshell if given); returns the msg id (collect the reply with `_kernel_reply`)."
    msg = kc.session.msg("execute_request", dict(code=code, silent=False, store_history=False, user_expressions={},
                                                 allow_stdin=False, stop_on_error=True))
    if subshell_id is not None: msg["header"]["subshell_id"] = subshell_id
    kc.shell_channel.send(msg)
    return msg["header"]["msg_id"]


def _kernel_reply(kc, msg_id: str, timeout: float = WAIT_S, seen: list|None = None) -> dict:
    "The reply to `msg_id` and its stdout and errors, within `timeout` seconds; every iopub message read goes to `seen`."
    out, deadline = {"stdout": "", "errors": [], "status": None}, time.monotonic() + timeout
    while out["status"] is None:
        assert time.monotonic() < deadline, f"no reply within {timeout} s; so far {out}"
        try: m = kc.get_shell_msg(timeout=1)
        except Exception: m = None
        if m is not None and m["parent_header"].get("msg_id") == msg_id: out["status"] = m["content"]["status"]
        while True:
            try: io = kc.get_iopub_msg(timeout=0.05)
            except Exception: break
            if seen is not None: seen.append(io)
            if io["parent_header"].get("msg_id") != msg_id: continue
            if io["msg_type"] == "stream": out["stdout"] += io["content"]["text"]
            elif io["msg_type"] == "error": out["errors"].append("\n".join(io["content"]["traceback"]))
    return out


@pytest.fixture
def kernel(tmp_path):
    "A real ipykernel started in tmp_path, this checkout on its path: yields (manager, client); shut down after the test."
    jc = pytest.importorskip("jupyter_client")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    env.pop("PYTEST_CURRENT_TEST", None); env.pop(widgets.WIDGETS_ENV, None)
    km = jc.KernelManager(kernel_name="python3")
    km.start_kernel(env=env, cwd=str(tmp_path))
    kc = km.client(); kc.start_channels()
    try:
        kc.wait_for_ready(timeout=WAIT_S)
        yield km, kc
    finally:
        kc.stop_channels(); km.shutdown_kernel(now=True)


def _subshell(kc) -> str:
    "A new subshell of the kernel (where ipykernel 7 runs a widget callback from the second press on); skips without them."
    kc.control_channel.send(kc.session.msg("create_subshell_request", {}))
    rep = kc.get_control_msg(timeout=WAIT_S)
    sid = rep["content"].get("subshell_id")
    if sid is None: pytest.skip(f"this kernel has no subshells: {rep['content']}")
    return sid


def _wait_for(marker: Path, what: str):
    deadline = time.monotonic() + WAIT_S
    while not marker.exists():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_real_kernel_interrupt_stops_a_run_pressed_on_a_subshell(kernel, tmp_path):
    "A real ipykernel 7: Run pressed twice, the second time on a subshell thread; Kernel > Interrupt stops it with a checkpoint."
    km, kc = kernel
    root, marker = tmp_path/"runs", tmp_path/"step2"
    setup = _kernel_reply(kc, _kernel_execute(kc, KERNEL_SETUP.format(root=str(root), marker=str(marker))))
    assert setup["status"] == "ok" and "ready" in setup["stdout"], setup
    sid = _subshell(kc)
    run = _kernel_execute(kc, "import threading; print(threading.current_thread() is threading.main_thread()); "
                              "print(panel.run_button.click() is None)", subshell_id=sid)
    _wait_for(marker, "the second run never reached step 2")
    km.interrupt_kernel()                                     # Kernel > Interrupt: a SIGINT to the kernel
    second = _kernel_reply(kc, run)
    assert second["stdout"].split()[:2] == ["False", "True"], second   # the press ran off the main thread, and returned at once
    check = _kernel_reply(kc, _kernel_execute(kc, "panel.worker.join(60); print(panel.worker.is_alive(), panel.status.value)"))
    assert check["stdout"].startswith("False") and "stopped:" in check["stdout"] and "press Run to resume" in check["stdout"], (check, second)
    (ck,) = (root/"paper2"/"_groups").glob("*/ckpt.pt")
    c = load_checkpoint(ck)
    assert c["kind"] == "interrupt" and 2 <= c["step"] < 8, (c["kind"], c["step"])


def test_real_kernel_stop_button_pressed_through_its_comm(kernel, tmp_path):
    "A real ipykernel 7: Run pressed on a subshell thread, then Stop pressed as a browser does, by a comm message to its widget."
    km, kc = kernel
    root, marker = tmp_path/"runs", tmp_path/"step2"
    setup = _kernel_reply(kc, _kernel_execute(kc, KERNEL_SETUP.format(root=str(root), marker=str(marker))
                                                 + "\nprint('stop', panel.stop_button.model_id)"))
    assert setup["status"] == "ok" and "ready" in setup["stdout"], setup
    model_id = setup["stdout"].split("stop ")[-1].split()[0]
    sid = _subshell(kc)
    run = _kernel_execute(kc, "print(panel.run_button.click() is None)", subshell_id=sid)
    _wait_for(marker, "the second run never reached step 2")
    click = kc.session.msg("comm_msg", {"comm_id": model_id, "data": {"method": "custom", "content": {"event": "click"}}})
    kc.shell_channel.send(click)                              # what the front end sends when Stop is clicked
    second = _kernel_reply(kc, run)
    assert second["status"] == "ok", second
    check = _kernel_reply(kc, _kernel_execute(kc, "panel.worker.join(60); print(panel.worker.is_alive(), panel.status.value)"))
    assert check["stdout"].startswith("False") and "stopped:" in check["stdout"] and "press Run to resume" in check["stdout"], (check, second)
    (ck,) = (root/"paper2"/"_groups").glob("*/ckpt.pt")
    c = load_checkpoint(ck)
    assert c["kind"] == "interrupt" and 2 <= c["step"] < 8, (c["kind"], c["step"])


LOG_SETUP = """
import torch
from dropout_residual.widgets import ExperimentPanel
torch.set_num_threads(1)
panel = ExperimentPanel("paper2", preset="smoke", labels=["fixed"], root={root!r}, progress=True, device="cpu")
print("log", panel.log.model_id)
"""


def test_real_kernel_run_on_a_worker_thread_prints_into_the_panel_log(kernel, tmp_path):
    """A real ipykernel 7: Run pressed on a subshell trains on a worker thread; what it prints must carry the message id the
    log's Output widget captures while the run is under way, which is how JupyterLab routes output into the widget."""
    km, kc = kernel
    seen = []
    setup = _kernel_reply(kc, _kernel_execute(kc, LOG_SETUP.format(root=str(tmp_path/"runs"))), seen=seen)
    assert setup["status"] == "ok", setup
    log_id = setup["stdout"].split("log ")[-1].split()[0]
    run = _kernel_execute(kc, "panel.run_button.click()", subshell_id=_subshell(kc))
    assert _kernel_reply(kc, run, seen=seen)["status"] == "ok"
    done = _kernel_reply(kc, _kernel_execute(kc, "panel.worker.join(60); print(panel.worker.is_alive(), panel.status.value)"), seen=seen)
    assert done["stdout"].startswith("False") and "done:" in done["stdout"], done
    assert "the same from a terminal" not in done["stdout"], done   # a cell run on the main shell meanwhile catches none of it
    captures = [(i, m["content"]["data"]["state"]["msg_id"]) for i, m in enumerate(seen)
                if m["msg_type"] == "comm_msg" and m["content"]["comm_id"] == log_id and "msg_id" in m["content"]["data"].get("state", {})]
    assert [c for _, c in captures][:2] == [run, ""], captures     # the log captures the press's messages, then lets go
    (begin, _), (end, _) = captures[:2]
    printed = [(i, m["content"]["text"]) for i, m in enumerate(seen) if m["msg_type"] == "stream" and m["parent_header"].get("msg_id") == run]
    logged = "".join(t for i, t in printed if begin < i < end)
    assert "the same from a terminal: dropout-residual sweep paper2" in logged and "[group 1/1] wrote 1 runs" in logged, printed
