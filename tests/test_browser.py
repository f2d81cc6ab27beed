"""The neuron inspector in a real browser: JupyterLab on 127.0.0.1 driven by Debian's headless Chromium.

Skipped (with the reason) when Chromium, Playwright, JupyterLab or ipywidgets are missing; install them with
`scripts/install_browser.sh` (Chromium) and the `browser` extra (`pip install -e ".[browser]"`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("MARBLE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = Path(os.environ.get("MARBLE_SCREENSHOT_DIR", ROOT / "build" / "browser")) / "inspector.png"
NOTEBOOK_CODE = """\
import torch
from marble_nb.inspect import resnet18_graph
from marble_nb.widgets import inspect_graph

graph = resnet18_graph(image_size=32, width=8, num_classes=10)
sample = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(0))
inspect_graph(graph, sample)
"""
TIMEOUT_MS = 120_000  # kernel start + importing torch on a busy 2-core machine


def _missing() -> str | None:
    "Why the browser test cannot run here, or None."
    if not CHROMIUM.exists():
        return f"Chromium not found at {CHROMIUM} (install it with scripts/install_browser.sh)"
    for module, extra in (("playwright", "browser"), ("jupyterlab", "browser"), ("ipywidgets", "widgets")):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install -e '.[{extra}]')"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_notebook(path: Path) -> None:
    "A one-cell notebook that builds a graph and shows the inspector."
    nb = {
        "cells": [
            {
                "cell_type": "code",
                "execution_count": None,
                "id": "inspect",
                "metadata": {},
                "outputs": [],
                "source": NOTEBOOK_CODE,
            }
        ],  # fmt: skip
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(nb), encoding="utf-8")


def _wait_for_server(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not answer {url} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    "Stop the server and everything it started (kernels share its process group)."
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):  # kernels that outlived the server
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def jupyterlab(tmp_path: Path) -> Iterator[tuple[str, str]]:
    "A JupyterLab server on 127.0.0.1 with a random token, serving a notebook folder; stopped afterwards."
    reason = _missing()
    if reason:
        pytest.skip(reason)
    work = tmp_path / "notebooks"
    work.mkdir()
    _write_notebook(work / "inspect.ipynb")
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(
        os.environ,
        JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
        JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
        IPYTHONDIR=str(tmp_path / "ipython"),
        JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "lab-settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "lab-workspaces"),
    )
    log = tmp_path / "jupyterlab.log"
    cmd = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.extension_manager=readonly",
    ] + (["--allow-root"] if os.geteuid() == 0 else [])  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_for_server(f"{base}/api/status?token={token}", proc, log)
        yield base, token
    finally:
        _stop(proc)


def _expected() -> dict[str, str]:
    "What the inspector must show, computed here with the same graph and sample."
    import torch

    from marble_nb.inspect import resnet18_graph
    from marble_nb.widgets import NeuronInspector

    graph = resnet18_graph(image_size=32, width=8, num_classes=10)
    sample = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(0))
    ins = NeuronInspector(graph, sample)
    first = ins.details()
    fc3 = ins.select("fc", 3).details()
    fc0 = ins.select("fc", 0).details()
    add = ins.select("layer1.0.add", 83).details()
    first_in = ins.links("in")[0][0]  # the neighbour listed first: the strongest incoming synapse
    return dict(
        first_bias=first["bias"],
        fc0=fc0["activation"],
        fc3=fc3["activation"],
        fc3_bias=fc3["bias"],
        add=add["activation"],
        neighbour=f"{first_in['group']}[{first_in['position']}]",
    )


def _cell(page, name: str) -> str:
    return page.locator(f".marble-details td.marble-{name}").inner_text()


def _run_first_cell(page, attempts: int = 6) -> None:
    "Run the notebook's first cell, pressing again while its prompt shows it was never queued (a busy machine)."
    prompt = page.locator(".jp-Notebook .jp-Cell .jp-InputPrompt").first
    for _ in range(attempts):
        page.locator(".jp-Notebook .jp-Cell .cm-content").first.click()
        page.keyboard.press("Shift+Enter")
        with contextlib.suppress(Exception):
            page.wait_for_function(
                "el => /\\[(\\*|\\d+)\\]/.test(el.textContent)", arg=prompt.element_handle(), timeout=20_000
            )
            return
    raise AssertionError(f"the first cell never started running; its prompt shows {prompt.inner_text()!r}")


def test_inspector_in_jupyterlab(jupyterlab: tuple[str, str], tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    base, token = jupyterlab
    want = _expected()
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),  # a fresh user-data-dir
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            expect.set_options(timeout=TIMEOUT_MS)
            page.goto(f"{base}/lab/tree/inspect.ipynb?token={token}")
            _run_first_cell(page)
            news = page.get_by_role("button", name="No", exact=True)  # JupyterLab's "news?" prompt: decline
            with contextlib.suppress(Exception):
                news.click(timeout=5_000)
            details = page.locator(".marble-inspector .marble-details")
            expect(details).to_contain_text("conv1[0: 0,0,0]")
            expect(page.locator(".marble-details td.marble-bias")).to_have_text(want["first_bias"])

            page.locator(".marble-group select").select_option(label="fc · identity · 10")
            expect(details).to_contain_text("fc[0]")
            expect(page.locator(".marble-details td.marble-activation")).to_have_text(want["fc0"])
            expect(page.locator(".marble-incoming")).to_contain_text("of 64")

            index = page.locator(".marble-index input")
            index.fill("3")
            index.press("Enter")
            expect(details).to_contain_text("fc[3]")
            expect(page.locator(".marble-details td.marble-activation")).to_have_text(want["fc3"])
            assert _cell(page, "bias") == want["fc3_bias"]
            assert want["fc3"] != want["fc0"]

            search = page.locator(".marble-search input")
            search.fill("layer1.0.add[1,2,3]")
            search.press("Enter")
            expect(details).to_contain_text("layer1.0.add[83: 1,2,3]")
            expect(page.locator(".marble-details td.marble-activation")).to_have_text(want["add"])

            neighbour = page.locator(".marble-neighbours select")
            expect(neighbour.locator("option").first).to_contain_text(want["neighbour"])  # lists refreshed
            neighbour.select_option(index=0)
            page.locator("button.marble-jump").click()
            expect(details).to_contain_text(want["neighbour"])
            page.locator(".marble-inspector").screenshot(path=str(SCREENSHOT))
        finally:
            context.close()
    assert SCREENSHOT.stat().st_size > 10_000
