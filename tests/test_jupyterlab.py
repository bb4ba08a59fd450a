"""A real JupyterLab server on localhost runs the experiment panel in a real kernel, through the server's API.

The test starts `jupyter lab` as a subprocess (port 0: the server picks a free port and writes it to its
runtime file), starts a kernel over REST, runs the panel's Run handler with the `smoke` preset over the
kernel's websocket, checks what came back, and stops the server by its own process id."""
import json, os, subprocess, sys, time, urllib.request, uuid
from pathlib import Path

import pytest

websocket = pytest.importorskip("websocket")  # websocket-client (a jupyterlab dependency)

ROOT = Path(__file__).resolve().parents[1]
JUPYTER = Path(sys.executable).parent/"jupyter"


class JupyterLabServer:
    "`jupyter lab` in a subprocess with its own root, runtime and config folders; stopped by its pid."
    def __init__(self, root: Path, token: str|None = None, start_timeout: float = 60, env: dict|None = None):
        self.root, self.token, self.start_timeout = Path(root), token or uuid.uuid4().hex, start_timeout
        self.extra_env = env or {}
        self.proc, self.info = None, None

    def __enter__(self):
        rt = self.root/".rt"; rt.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(rt), JUPYTER_CONFIG_DIR=str(self.root/".cfg"),
                   IPYTHONDIR=str(self.root/".ipython"), JUPYTER_PLATFORM_DIRS="1", **self.extra_env)
        env.pop("PYTEST_CURRENT_TEST", None)  # the kernel is a user's kernel, not a test process
        self.log = open(self.root/"server.log", "wb")
        self.proc = subprocess.Popen(
            [str(JUPYTER), "lab", "--no-browser", "--allow-root", "--port=0", "--ip=127.0.0.1",
             f"--ServerApp.token={self.token}", f"--ServerApp.root_dir={self.root}",
             "--ServerApp.open_browser=False", "--LabApp.news_url=", "--ServerApp.shutdown_no_activity_timeout=600"],
            cwd=self.root, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        info_file = rt/f"jpserver-{self.proc.pid}.json"
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None: raise RuntimeError(f"jupyter lab exited with {self.proc.returncode}: {self.logtext()}")
            if info_file.is_file():
                try: self.info = json.loads(info_file.read_text()); break
                except json.JSONDecodeError: pass  # half written
            time.sleep(0.2)
        else:
            self.stop(); raise TimeoutError(f"jupyter lab did not start within {self.start_timeout} s: {self.logtext()}")
        assert self.info["pid"] == self.proc.pid
        self.base = f"http://127.0.0.1:{self.info['port']}{self.info['base_url']}"
        return self

    def logtext(self) -> str:
        self.log.flush()
        return (self.root/"server.log").read_text(errors="replace")[-3000:]

    def api(self, method: str, path: str, body: dict|None = None, timeout: float = 30):
        "Call the server's REST API; returns the decoded JSON (or None for an empty body)."
        req = urllib.request.Request(self.base + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            data = r.read()
        return json.loads(data) if data else None

    def stop(self, timeout: float = 20) -> int:
        "Terminate the server by its own pid, wait, kill it if it does not stop."
        if self.proc is None or self.proc.poll() is not None: return self.proc.returncode if self.proc else 0
        self.proc.terminate()
        try: self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill(); self.proc.wait(10)
        self.log.close()
        return self.proc.returncode

    def __exit__(self, *exc): self.stop()


def execute(server: JupyterLabServer, kernel_id: str, code: str, timeout: float = 120) -> dict:
    "Run `code` in the kernel over the server's websocket; returns stdout, stderr, errors, the reply status."
    url = server.base.replace("http://", "ws://") + f"api/kernels/{kernel_id}/channels"
    ws = websocket.create_connection(url, header=[f"Authorization: token {server.token}"], timeout=timeout)
    try:
        msg_id = uuid.uuid4().hex
        ws.send(json.dumps({
            "header": {"msg_id": msg_id, "username": "test", "session": uuid.uuid4().hex, "msg_type": "execute_request",
                       "version": "5.3", "date": ""},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True}}))
        out = {"stdout": "", "stderr": "", "errors": [], "status": None, "idle": False}
        deadline = time.monotonic() + timeout
        while not (out["status"] and out["idle"]):
            if time.monotonic() > deadline: raise TimeoutError(f"no reply within {timeout} s; so far: {out}")
            m = json.loads(ws.recv())
            if m.get("parent_header", {}).get("msg_id") != msg_id: continue
            t, c = m["msg_type"], m["content"]
            if t == "stream": out[c["name"]] += c["text"]
            elif t == "error": out["errors"].append("\n".join(c["traceback"]))
            elif t == "execute_reply": out["status"] = c["status"]
            elif t == "status" and c["execution_state"] == "idle": out["idle"] = True
        return out
    finally:
        ws.close()


def pid_alive(pid: int) -> bool:
    try: os.kill(pid, 0)
    except ProcessLookupError: return False
    except PermissionError: return True
    return True


PAPERS = ROOT/"nbs"/"papers"
# the paper notebook whose panel runs: paper 1's, else the first paper notebook there is, else none
PAPER_NB = next(iter(sorted(PAPERS.glob("10_*.ipynb")) + sorted(PAPERS.glob("1[0-9]_*.ipynb"))), PAPERS/"10_paper1_dropout_residual.ipynb")

def panel_cells(nb_path: Path = PAPER_NB) -> list[str]:
    "The code cells of a paper notebook up to and including the one that builds its `ExperimentPanel`."
    cells = [("".join(c["source"]) if isinstance(c["source"], list) else c["source"])
             for c in json.loads(nb_path.read_text())["cells"] if c["cell_type"] == "code"]
    for i, src in enumerate(cells):
        if "ExperimentPanel(" in src: return cells[:i + 1]
    raise AssertionError(f"{nb_path} has no cell that builds an ExperimentPanel")

# Without the paper notebook, its panel is built the same way from the package (that is what its cell does).
DIRECT_PANEL = r"""
import tempfile
from dropout_residual.widgets import ExperimentPanel
panel = ExperimentPanel("paper1", preset="smoke", root=tempfile.mkdtemp(prefix="paper1_smoke_"), progress=False)
panel.configs.value = panel.configs.options[:2]
panel.on_run(None)
panel
"""

SETUP = """
import os
os.environ["IN_TEST"] = "1"          # the notebooks' own switch to the smoke preset
os.environ["MPLBACKEND"] = "Agg"
import torch; torch.set_num_threads(1)   # tiny models on a shared machine: threads only spin
os.chdir({cwd!r})
"""

CHECK = """
import json, os
from pathlib import Path
panel = globals()["smoke_panel"] if "smoke_panel" in globals() else panel   # a paper notebook trains its smoke panel under IN_TEST and shows the reader's one
bundle = panel._repr_mimebundle_()
print("RESULT", json.dumps({"pid": os.getpid(), "root": str(panel.root), "n_rows": len(panel.results),
    "labels": sorted(map(str, panel.results["label"])), "selected": sorted(panel.configs.value),
    "runs_done": int(panel.runs["done"].sum()), "figures": sorted(panel.figures), "status": panel.status.value,
    "summaries": len(list(Path(panel.root).rglob("summary.json"))),
    "widget_view": "application/vnd.jupyter.widget-view+json" in bundle}))
"""


def test_panel_runs_in_a_real_kernel(tmp_path):
    t0 = time.monotonic()
    cells = panel_cells() if PAPER_NB.is_file() else [DIRECT_PANEL]
    cwd = PAPER_NB.parent if PAPER_NB.is_file() else ROOT/"nbs"
    (tmp_path/"tmp").mkdir()
    with JupyterLabServer(tmp_path, env={"TMPDIR": str(tmp_path/"tmp")}) as server:
        status = server.api("GET", "api/status")
        assert "started" in status
        # the lab front end serves the ipywidgets manager, so panels render as widgets in a browser
        extensions = [e["name"] for e in server.api("GET", "lab/api/extensions")]
        assert any("jupyterlab-manager" in n for n in extensions), extensions
        kernel = server.api("POST", "api/kernels", {"name": "python3"})
        assert kernel["name"] == "python3"
        try:
            for code in [SETUP.format(cwd=str(cwd)), *cells, CHECK]:
                res = execute(server, kernel["id"], code, timeout=150)
                assert res["status"] == "ok", (code[:300], res["errors"] or res["stderr"])
            line = next(l for l in res["stdout"].splitlines() if l.startswith("RESULT "))
            got = json.loads(line[len("RESULT "):])
            # the selected configurations ran to the end through the run store, and the panel redrew
            assert got["n_rows"] >= 1 and got["labels"] == got["selected"], got
            assert got["runs_done"] >= got["n_rows"] and got["summaries"] >= got["runs_done"], got
            assert {"curves", "best"} <= set(got["figures"]), got
            assert got["widget_view"], "in a live kernel the panel displays as a widget"
            assert got["status"].find("done") >= 0 and "error" not in got["status"].lower(), got["status"]
            assert Path(got["root"]).resolve().is_relative_to(tmp_path.resolve()), got["root"]
            kernel_pid = got["pid"]
            assert pid_alive(kernel_pid)
            assert any(k["id"] == kernel["id"] for k in server.api("GET", "api/kernels"))
        finally:
            rc = server.stop()
    # the server stopped (SIGTERM: it shuts its kernels down first) and took its kernel with it
    assert server.proc.poll() is not None, "the server is still running"
    for _ in range(50):
        if not pid_alive(kernel_pid): break
        time.sleep(0.1)
    else:
        os.kill(kernel_pid, 9); pytest.fail(f"kernel {kernel_pid} outlived its server (rc {rc})")
    assert time.monotonic() - t0 < 240
