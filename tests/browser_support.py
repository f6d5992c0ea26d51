"""Browser-test helpers: a throwaway JupyterLab server and Playwright driving Debian's Chromium.

Everything here has a timeout. The server runs with a temporary HOME and Jupyter/IPython
directories, so nothing on the machine (settings, workspaces, kernelspecs) leaks in, and
stopping it checks with psutil that no kernel or party process outlives it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import psutil

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Locator, Page

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SERVER_START_TIMEOUT = 60.0
RUN_ALL_TIMEOUT = 180.0
UI_TIMEOUT_MS = 30_000
VIEWPORT = {"width": 1400, "height": 1000}

# JupyterLab user settings: no news/update checks or toasts, every cell in the DOM, no
# autosave (the tests save explicitly), no extension manager reaching out to PyPI.
LAB_SETTINGS: dict[str, dict[str, Any]] = {
    "@jupyterlab/apputils-extension/notification": {
        "fetchNews": "false", "checkForUpdates": False, "doNotDisturbMode": True,
    },
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    "@jupyterlab/extensionmanager-extension/plugin": {"enabled": False},
}

NOTEBOOK = ".jp-NotebookPanel:not(.lm-mod-hidden)"


class BrowserTestError(AssertionError):
    """A browser-test step failed; the message says what was visible at the time."""


# --------------------------------------------------------------------------- server


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LabServer:
    """A running ``jupyter lab`` process and how to reach it."""

    root_dir: Path
    port: int
    token: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        """Absolute URL of ``path`` (relative to the server root) carrying the token."""
        sep = "&" if "?" in path else "?"
        return f"{self.base_url}/{path.lstrip('/')}{sep}token={self.token}"

    def api(self, path: str, method: str = "GET", timeout: float = 10.0) -> Any:
        """Call the REST API; returns the decoded JSON body (None if empty)."""
        request = urllib.request.Request(self.url(path), method=method,
                                         data=b"" if method != "GET" else None)
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
        return json.loads(body) if body else None

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server's log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    def notebook(self, name: str) -> dict[str, Any]:
        """The notebook as saved on disk (nbformat JSON)."""
        return self.api(f"api/contents/{quote(name)}?content=1")

    def kernel_state(self, name: str) -> str:
        """Execution state of the kernel of notebook ``name`` ('' if it has no session)."""
        for session in self.api("api/sessions"):
            if session.get("path") == name and session.get("kernel"):
                return session["kernel"].get("execution_state", "")
        return ""

    def shutdown_kernels(self) -> None:
        """Shut down every running kernel (the notebook kernels stop their demo parties)."""
        for kernel in self.api("api/kernels"):
            with contextlib.suppress(urllib.error.URLError, OSError):
                self.api(f"api/kernels/{kernel['id']}", method="DELETE", timeout=30)


def _write_lab_settings(settings_dir: Path) -> None:
    for plugin, values in LAB_SETTINGS.items():
        path = settings_dir / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values, indent=2))


def _server_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JUPYTER", "JPY_", "IPYTHON", "MPLBACKEND", "PYTHONPATH"))}
    venv_bin = str(Path(sys.executable).parent)
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != venv_bin]
    env.update(
        HOME=str(home),
        PATH=os.pathsep.join([venv_bin, *path]),
        PYTHONPATH=str(REPO),  # kernels and party processes import this checkout
        JUPYTER_CONFIG_DIR=str(home / "jupyter-config"),
        JUPYTER_DATA_DIR=str(home / "jupyter-data"),
        JUPYTER_RUNTIME_DIR=str(home / "jupyter-runtime"),
        IPYTHONDIR=str(home / "ipython"),
        JUPYTER_PLATFORM_DIRS="0",
        PYDEVD_DISABLE_FILE_VALIDATION="1",
        PYTHONUNBUFFERED="1",
    )
    for key in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"):
        Path(env[key]).mkdir(parents=True, exist_ok=True)
    return env


def _wait_ready(server: LabServer, timeout: float) -> bool:
    """Poll ``/api/status`` until it answers; False if the process died first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        with contextlib.suppress(urllib.error.URLError, OSError, ValueError):
            if isinstance(server.api("api/status", timeout=2), dict):
                return True
        time.sleep(0.25)
    raise BrowserTestError(f"JupyterLab did not answer /api/status within {timeout:.0f} s; "
                           f"server log tail:\n{server.log_tail()}")


def start_lab(root_dir: Path, workdir: Path, timeout: float = SERVER_START_TIMEOUT) -> LabServer:
    """Start ``jupyter lab`` serving ``root_dir``; its HOME, config and logs live in ``workdir``."""
    home = workdir / "home"
    env = _server_env(home)
    config = Path(env["JUPYTER_CONFIG_DIR"])
    _write_lab_settings(config / "lab" / "user-settings")
    (config / "lab" / "workspaces").mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    for attempt in range(3):
        port = free_port()
        log_path = workdir / f"jupyter-lab-{attempt}.log"
        command = [
            sys.executable, "-m", "jupyter", "lab", "--no-browser",
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root_dir}",
            "--ServerApp.open_browser=False", "--ServerApp.terminals_enabled=False",
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class="
            "jupyterlab.handlers.announcements.NeverCheckForUpdate",
            f"--LabApp.user_settings_dir={config / 'lab' / 'user-settings'}",
            f"--LabApp.workspaces_dir={config / 'lab' / 'workspaces'}",
            "--LabApp.extension_manager=readonly",
        ]
        if os.geteuid() == 0:  # containers and CI runners
            command.append("--allow-root")
        with open(log_path, "wb") as log:
            process = subprocess.Popen(command, cwd=root_dir, env=env, stdout=log,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        server = LabServer(root_dir, port, token, process, log_path)
        try:
            if _wait_ready(server, timeout):
                return server
        except BaseException:
            stop_lab(server, check_leftovers=False)
            raise
        stop_lab(server, check_leftovers=False)
        if "already in use" not in server.log_tail(200):
            break
    raise BrowserTestError(f"JupyterLab exited during start-up (code {process.returncode}); "
                           f"server log tail:\n{server.log_tail()}")


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
    return alive


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while (alive := _alive(procs)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive


def stop_lab(server: LabServer, grace: float = 20.0, check_leftovers: bool = True) -> None:
    """Shut the server down (kernels first), kill stragglers, and fail if any descendant
    (kernel, demo party, ...) had to be killed."""
    process = server.process
    try:
        descendants = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    if process.poll() is None:
        with contextlib.suppress(urllib.error.URLError, OSError, ValueError):
            server.shutdown_kernels()
        with contextlib.suppress(urllib.error.URLError, OSError, ValueError):
            server.api("api/shutdown", method="POST", timeout=10)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=wait)
                    break
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # anything left in the server's group
    stragglers = _wait_gone(descendants, grace)
    if not stragglers:
        return
    described = []
    for proc in stragglers:
        with contextlib.suppress(psutil.Error):
            described.append(f"{proc.pid}: {' '.join(proc.cmdline())[:200]}")
            proc.kill()
    _wait_gone(stragglers, 5)
    if check_leftovers:
        raise BrowserTestError("processes outlived the JupyterLab server and were killed:\n"
                               + "\n".join(described))


@contextlib.contextmanager
def lab_server(root_dir: Path, workdir: Path) -> Iterator[LabServer]:
    """``start_lab`` as a context manager that always stops the server."""
    server = start_lab(root_dir, workdir)
    try:
        yield server
    finally:
        stop_lab(server)


# --------------------------------------------------------------------------- browser


@contextlib.contextmanager
def chromium(user_data_dir: Path) -> Iterator[BrowserContext]:
    """A headless Chromium (Debian's, never a downloaded one) with a fresh profile."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(user_data_dir), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_ARGS, viewport=VIEWPORT, timeout=60_000)
        context.set_default_timeout(UI_TIMEOUT_MS)
        try:
            yield context
        finally:
            context.close()


def open_notebook(context: BrowserContext, server: LabServer, name: str) -> Page:
    """Open ``name`` in JupyterLab and wait until its kernel is idle (in the page and in the
    server's session list)."""
    page = context.new_page()
    page.goto(server.url(f"lab/tree/{quote(name)}?reset"), wait_until="domcontentloaded",
              timeout=60_000)
    try:
        page.locator(f"{NOTEBOOK} .jp-Notebook .jp-Cell").first.wait_for(state="visible",
                                                                        timeout=60_000)
        _poll(lambda: kernel_status(page) == "idle" and server.kernel_state(name) == "idle",
              60.0, lambda: f"kernel not idle (page: {kernel_status(page)!r}, "
                            f"server: {server.kernel_state(name)!r})")
    except Exception as exc:
        raise BrowserTestError(f"{name} did not open with an idle kernel: {exc}\n"
                               f"server log tail:\n{server.log_tail()}") from exc
    return page


def kernel_status(page: Page) -> str:
    """The notebook toolbar's kernel status (idle, busy, starting, ...), or '' if unknown."""
    indicator = page.locator(f"{NOTEBOOK} .jp-Notebook-ExecutionIndicator")
    if indicator.count() == 0:
        return ""
    return indicator.first.get_attribute("data-status") or ""


def _poll(done: Callable[[], bool], timeout: float, describe: Callable[[], str],
          interval: float = 0.25) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise BrowserTestError(f"timed out after {timeout:.0f} s: {describe()}")
        time.sleep(interval)


def menu(page: Page, menu_label: str, command: str) -> None:
    """Click a main-menu entry by its command id, e.g. ``menu(page, "Run", "runmenu:run-all")``."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(f"^{menu_label}$")).click()
    item = page.locator(f'.lm-Menu li.lm-Menu-item[data-command="{command}"]').first
    item.wait_for(state="visible", timeout=5_000)
    if "lm-mod-disabled" in (item.get_attribute("class") or ""):
        page.keyboard.press("Escape")
        raise BrowserTestError(f"menu {menu_label} -> {command} is disabled")
    item.click()


def activate_notebook(page: Page) -> None:
    """Make the open notebook the current widget (the menus act on it) in command mode."""
    page.locator(f"{NOTEBOOK} .jp-Cell .jp-InputPrompt").first.click()
    page.keyboard.press("Escape")


def _cell_states(page: Page) -> list[dict[str, Any]]:
    return page.evaluate(
        """(sel) => Array.from(document.querySelectorAll(sel + ' .jp-Cell.jp-CodeCell'))
            .map((cell, i) => ({
              index: i,
              prompt: (cell.querySelector('.jp-InputArea-prompt') || {}).textContent || '',
              source: (cell.querySelector('.jp-InputArea-editor') || {}).innerText || '',
              stderr: Array.from(cell.querySelectorAll(
                  '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'))
                .map(o => o.innerText),
            }))""",
        NOTEBOOK,
    )


def run_all_cells(page: Page, timeout: float = RUN_ALL_TIMEOUT) -> list[dict[str, Any]]:
    """Clear outputs, then Run -> Run All Cells through the menus, and wait until every code
    cell has run (or execution stopped at an error) and the kernel is idle."""
    activate_notebook(page)
    menu(page, "Edit", "editmenu:clear-all")
    _poll(lambda: all(not re.search(r"\d|\*", c["prompt"]) for c in _cell_states(page)), 15,
          lambda: "outputs were not cleared")
    menu(page, "Run", "runmenu:run-all")
    try:  # the first cell is queued at once; if not, the click went astray: once more
        _poll(lambda: any(re.search(r"\d|\*", c["prompt"]) for c in _cell_states(page)), 15,
              lambda: "Run All Cells started nothing")
    except BrowserTestError:
        activate_notebook(page)
        menu(page, "Run", "runmenu:run-all")
    state: dict[str, Any] = {"cells": [], "since": time.monotonic(), "key": None}

    def finished() -> bool:
        cells = _cell_states(page)
        prompts = [c["prompt"] for c in cells]
        key = (tuple(prompts), kernel_status(page))
        if key != state["key"]:
            state.update(key=key, since=time.monotonic())
        state["cells"] = cells
        if any("*" in p for p in prompts) or kernel_status(page) != "idle":
            return False
        if all(re.search(r"\d", p) for p in prompts):
            return True
        # execution stopped early (an error aborts the queue): accept once it is stable
        return any(re.search(r"\d", p) for p in prompts) and \
            time.monotonic() - state["since"] > 3

    def describe() -> str:
        return "cells still running:\n" + _describe_cells(state["cells"])

    try:
        _poll(finished, timeout, describe, interval=0.5)
    except BrowserTestError:
        with contextlib.suppress(Exception):
            screenshot(page, "failed-run-all.png")
        raise
    return state["cells"]


def _describe_cells(cells: list[dict[str, Any]]) -> str:
    lines = []
    for cell in cells:
        first = cell["source"].strip().splitlines()[:1]
        lines.append(f"  cell {cell['index']} {cell['prompt'].strip() or '[ ]:'} "
                     f"{first[0][:70] if first else ''}")
        lines.extend(f"    stderr: {_tail(text, 8)}" for text in cell["stderr"])
    return "\n".join(lines)


def _tail(text: str, lines: int) -> str:
    return "\n      ".join(text.strip().splitlines()[-lines:])


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def save_notebook(page: Page, server: LabServer, name: str, timeout: float = 30.0) -> dict:
    """File -> Save Notebook, then return the saved notebook read back through the API.

    Jupyter's "atomic" save copies the old file to ``.~name``, rewrites the file in place and
    removes the copy: the save has ended once the file changed and the copy is gone (a read
    in between sees half a notebook, and the server answers 400 Unreadable Notebook).
    """
    before = server.api(f"api/contents/{quote(name)}?content=0")["last_modified"]
    backup = (server.root_dir / name).with_name(f".~{Path(name).name}")
    menu(page, "File", "docmanager:save")
    _poll(lambda: (server.api(f"api/contents/{quote(name)}?content=0")["last_modified"] != before
                   and not backup.exists()),
          timeout, lambda: f"{name} was not saved")
    return server.notebook(name)


def assert_no_errors(page: Page, server: LabServer, name: str,
                     cells: list[dict[str, Any]]) -> None:
    """Fail if any code cell did not run or raised; the message shows the error outputs."""
    saved = save_notebook(page, server, name)
    errors = []
    for i, cell in enumerate(c for c in saved["content"]["cells"] if c["cell_type"] == "code"):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                trace = ANSI.sub("", "\n".join(output.get("traceback", [])))
                errors.append(f"cell {i} raised {output['ename']}: {output['evalue']}\n"
                              f"    {_tail(trace, 15)}")
    not_run = [c for c in cells if not re.search(r"\d", c["prompt"])]
    if errors or not_run:
        raise BrowserTestError(f"{name}: {len(errors)} cell(s) raised, {len(not_run)} did not "
                               "run\n" + "\n".join(errors) + "\nvisible cells:\n"
                               + _describe_cells(cells))


# --------------------------------------------------------------------------- widgets, output


def outputs(page: Page) -> Locator:
    """Every rendered output of the open notebook."""
    return page.locator(f"{NOTEBOOK} .jp-OutputArea-output")


def widget(page: Page, description: str) -> Locator:
    """The ipywidget whose description label reads ``description`` (buttons: their text)."""
    scope = page.locator(f"{NOTEBOOK} .jp-OutputArea-output")
    labelled = scope.locator(
        f'.jupyter-widgets:has(> label.widget-label:text-is("{description}"))')
    button = scope.locator("button.jupyter-button",
                           has_text=re.compile(rf"^\s*{re.escape(description)}\s*$"))
    return labelled.or_(button).first


def collapse_left_sidebar(page: Page) -> None:
    """Hide the file browser so screenshots show the notebook at full width."""
    if page.locator("#jp-left-stack:not(.lm-mod-hidden)").count():
        menu(page, "View", "filebrowser:toggle-main")
        page.locator("#jp-left-stack.lm-mod-hidden").wait_for(state="attached", timeout=5_000)


def screenshot_dir() -> Path:
    """``$PPA_SCREENSHOT_DIR`` or ``tests/output/browser``, created."""
    folder = Path(os.environ.get("PPA_SCREENSHOT_DIR") or REPO / "tests" / "output" / "browser")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def screenshot(page: Page, name: str, scroll_to: Locator | None = None,
               height: int | None = None) -> Path:
    """Save a PNG of the window, ``height`` pixels tall if given, after scrolling
    ``scroll_to`` to the top of the notebook."""
    size = page.viewport_size or VIEWPORT
    if height:
        page.set_viewport_size({"width": size["width"], "height": height})
    try:
        page.wait_for_timeout(500)  # JupyterLab relayouts after a resize
        if scroll_to is not None:
            scroll_to.evaluate("el => el.scrollIntoView({block: 'start'})")
        page.wait_for_timeout(300)  # let scrolling and image decoding settle
        path = screenshot_dir() / name
        page.screenshot(path=str(path), timeout=UI_TIMEOUT_MS)
    finally:
        page.set_viewport_size(size)
    return path


def write_notebook(path: Path, sources: list[str]) -> None:
    """Write a notebook of code cells (``sources``, unexecuted) for a browser test."""
    cells = [{"cell_type": "code", "execution_count": None, "id": f"cell-{i}",
              "metadata": {}, "outputs": [], "source": source}
             for i, source in enumerate(sources)]
    path.write_text(json.dumps({"cells": cells, "metadata": {"kernelspec": {
        "name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4, "nbformat_minor": 5}))


def refreshing_readme_screenshots() -> bool:
    """Whether screenshots go to ``docs/img`` (the README's: they show the full demo)."""
    return screenshot_dir().resolve() == (REPO / "docs" / "img").resolve()


def set_parameters(path: Path, **values: Any) -> None:
    """Set papermill parameters in the notebook's ``parameters`` cell, as a user would edit
    them: each ``name = ...`` line gets the new value and keeps its comment."""
    notebook = json.loads(path.read_text())
    (cell,) = [c for c in notebook["cells"] if "parameters" in c["metadata"].get("tags", [])]
    lines = "".join(cell["source"]).splitlines(keepends=True)
    for name, value in values.items():
        pattern = re.compile(rf"({re.escape(name)}\s*=\s*)[^#\n]*?(\s*#.*)?(\n?)")
        matches = [(i, m) for i, line in enumerate(lines) if (m := pattern.fullmatch(line))]
        if len(matches) != 1:
            raise BrowserTestError(f"{path.name}: no single parameter line {name} = ...")
        (i, m), = matches
        lines[i] = f"{m[1]}{value!r}{m[2] or ''}{m[3]}"
    cell["source"] = lines
    path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")
