"""Drive a real JupyterLab in a real (headless) Chromium: the plumbing of tests/test_browser.py.

``running_lab(notebook)`` starts JupyterLab on a free port in a throwaway root, settings and workspaces
directory (news toast off, no stored layout), and stops it (kernels included) on exit. ``LabPage`` wraps a
playwright page opened on one notebook: wait for the kernel to be connected and idle, clear outputs and run
all cells, run code in the notebook's kernel and read what it prints.

The pitfalls this avoids are listed in /work/shared/REFERENCE.md section 6: ``--allow-root``, a kernel that
is not yet connected ("Select Kernel" dialog), stale ``[n]`` prompts fooling the wait, the news toast,
``--ServerApp.port_retries=0`` on a free port, and never ``playwright install`` (Debian's chromium is used).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
NEWS_SETTINGS = (
    "@jupyterlab/apputils-extension",
    "notification",
    {"fetchNews": "false", "checkForUpdates": False},
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Lab:
    """A running JupyterLab: where it serves, its token, its root directory and its log file."""

    url: str
    token: str
    root: Path
    log: Path
    process: subprocess.Popen

    def notebook_url(self, name: str) -> str:
        return f"{self.url}/lab/tree/{name}?reset&token={self.token}"

    def api(self, path: str, method: str = "GET") -> Any:
        request = urllib.request.Request(
            f"{self.url}{path}", method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            body = response.read()
        return json.loads(body) if body else None

    def log_tail(self, n: int = 40) -> str:
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return "\n".join(lines[-n:])


@contextmanager
def running_lab(notebook: Path, *, startup_timeout: float = 40.0) -> Iterator[Lab]:
    """JupyterLab serving a temporary copy of ``notebook``; shut down (kernels too) on exit."""
    with tempfile.TemporaryDirectory(prefix="llama3-lab-browser-") as tmp:
        tmp_path = Path(tmp)
        root, settings, workspaces, data, runtime, config = (
            tmp_path / name for name in ("root", "settings", "workspaces", "data", "runtime", "config")
        )
        for folder in (root, settings, workspaces, data, runtime, config):
            folder.mkdir()
        shutil.copy(notebook, root / notebook.name)
        extension, plugin, values = NEWS_SETTINGS
        (settings / extension).mkdir(parents=True)
        (settings / extension / f"{plugin}.jupyterlab-settings").write_text(json.dumps(values))

        port, token = free_port(), secrets.token_hex(16)
        env = {
            **os.environ,
            "JUPYTER_CONFIG_DIR": str(config),
            "JUPYTER_DATA_DIR": str(data),
            "JUPYTER_RUNTIME_DIR": str(runtime),
            "JUPYTER_PLATFORM_DIRS": "1",
            # The kernel imports the checkout under test, whatever copy the environment has installed.
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        }
        log = tmp_path / "jupyterlab.log"
        command = [
            sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root",
            f"--ServerApp.port={port}", "--ServerApp.port_retries=0", "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}",
            f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={workspaces}",
            "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=",
        ]  # fmt: skip
        with log.open("wb") as log_file:
            process = subprocess.Popen(
                command, cwd=root, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
            )
        lab = Lab(f"http://127.0.0.1:{port}", token, root, log, process)
        try:
            _wait_until_serving(lab, startup_timeout)
            yield lab
        finally:
            _stop(lab)


def _wait_until_serving(lab: Lab, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lab.process.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with code {lab.process.returncode}:\n{lab.log_tail()}")
        try:
            lab.api("/api/status")
            return
        except OSError:
            time.sleep(0.25)
    raise TimeoutError(f"JupyterLab did not answer on {lab.url} within {timeout:.0f} s:\n{lab.log_tail()}")


def _stop(lab: Lab) -> None:
    """Stop the server through its API (it stops its kernels), then make sure its process group is gone."""
    if lab.process.poll() is None:
        try:
            lab.api("/api/shutdown", method="POST")
            lab.process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            pass
    if lab.process.poll() is None:
        os.killpg(lab.process.pid, signal.SIGTERM)
        try:
            lab.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(lab.process.pid, signal.SIGKILL)
            lab.process.wait(timeout=5)


# JavaScript run in the page, against window.jupyterapp (--LabApp.expose_app_in_browser=True).
_KERNEL_READY_JS = """() => {
  const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const kernel = panel && panel.sessionContext && panel.sessionContext.session &&
                 panel.sessionContext.session.kernel;
  return !!kernel && kernel.connectionStatus === 'connected' && kernel.status === 'idle';
}"""

_KERNEL_IDLE_JS = """() => {
  const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
  return kernel.status === 'idle';
}"""

_EXECUTE_JS = """async (code) => {
  const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
  const future = kernel.requestExecute({code, silent: false, store_history: false});
  let out = '';
  let error = null;
  future.onIOPub = (msg) => {
    const type = msg.header.msg_type;
    if (type === 'stream') out += msg.content.text;
    if (type === 'error') error = msg.content.ename + ': ' + msg.content.evalue;
  };
  await future.done;
  return {out, error};
}"""


class LabPage:
    """A playwright page showing one notebook of a running :class:`Lab`."""

    def __init__(self, page: Any, lab: Lab) -> None:
        self.page = page
        self.lab = lab

    def open(self, notebook: str, timeout_ms: int = 30_000) -> None:
        self.page.goto(self.lab.notebook_url(notebook))
        self.page.wait_for_function("() => !!window.jupyterapp", timeout=timeout_ms)
        self.page.wait_for_function(_KERNEL_READY_JS, timeout=timeout_ms)

    def command(self, name: str) -> None:
        self.page.evaluate(f"() => window.jupyterapp.commands.execute({json.dumps(name)})")

    def run_all(self, timeout_ms: int = 60_000) -> None:
        """Clear stored outputs (so old prompts cannot satisfy a wait), run every cell, wait for idle.

        A cell that raises stops the run (the cells after it never get a prompt number): that is reported
        at once, with the error, instead of waiting for the timeout.
        """
        self.command("notebook:clear-all-cell-outputs")
        self.command("notebook:run-all-cells")
        self.page.wait_for_function(
            """() => [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')]
                       .every((p) => /\\[\\d+\\]/.test(p.textContent)) ||
                     !!document.querySelector(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")""",
            timeout=timeout_ms,
        )
        if self.cell_errors():
            raise AssertionError("a cell raised during Run All:\n" + "\n".join(self.cell_errors()))
        self.page.wait_for_function(_KERNEL_IDLE_JS, timeout=timeout_ms)

    def execute(self, code: str) -> str:
        """Run ``code`` in the notebook's kernel (not as a cell) and return what it printed."""
        result = self.page.evaluate(_EXECUTE_JS, code)
        if result["error"]:
            raise AssertionError(f"kernel raised {result['error']} running:\n{code}")
        return result["out"]

    def cell_errors(self) -> list[str]:
        return self.page.locator(
            ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
        ).all_inner_texts()
