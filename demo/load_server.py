"""Start and stop ``python -m demo`` as a child process on 127.0.0.1, and read its memory.

Used by the load test (:mod:`demo.load_test`) and the demo's end-to-end tests. The server runs
from this checkout (the child's working directory is the repository root), listens on loopback
only, and is stopped with SIGTERM (the demo ends as on Ctrl-C) or killed if it does not.
"""

from __future__ import annotations

import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from effvit_sam.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[1]
URL_LINE = re.compile(r"running at (http://\S+)")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(*, model: str, port: int, checkpoint: Path | None = None, device: str = "cpu",
                 points_per_side: int = 8, max_sessions: int = 32, session_ttl: float = 1800.0,
                 startup_s: float = 240.0) -> tuple[subprocess.Popen, str]:
    """Launch the demo CLI and wait (at most ``startup_s``) for the URL it prints.

    Random weights unless ``checkpoint`` is given. Returns the process (its output keeps being
    collected in ``proc.log``, a list of lines) and the URL. Raises ``UserError`` with the end of
    the server's output if it exits or does not print its URL in time.
    """
    weights = ["--checkpoint", str(checkpoint)] if checkpoint else ["--random-weights"]
    cmd = [sys.executable, "-m", "demo", "--model", model, *weights, "--host", "127.0.0.1",
           "--port", str(port), "--device", device, "--points-per-side", str(points_per_side),
           "--max-sessions", str(max_sessions), "--session-ttl", str(session_ttl)]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str] = queue.Queue()
    proc.log = []  # type: ignore[attr-defined]

    def collect() -> None:
        for line in proc.stdout:
            proc.log.append(line)  # type: ignore[attr-defined]
            lines.put(line)

    threading.Thread(target=collect, daemon=True).start()
    deadline = time.monotonic() + startup_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            match = URL_LINE.search(lines.get(timeout=1))
        except queue.Empty:
            continue
        if match:
            return proc, match.group(1)
    stop_server(proc)
    raise UserError(f"the demo server ({' '.join(cmd[1:])}) did not start within {startup_s:g} s:\n"
                    + "".join(proc.log[-20:]))


def stop_server(proc: subprocess.Popen, *, timeout: float = 60.0) -> int:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; returns the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def _status_kb(pid: int, key: str) -> float | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # not Linux, or the process is gone
        return None
    match = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
    return float(match.group(1)) if match else None


def rss_mb(pid: int) -> float | None:
    """Resident memory of process ``pid`` now, in MiB (Linux ``/proc``; None elsewhere)."""
    kb = _status_kb(pid, "VmRSS")
    return None if kb is None else kb / 1024


def peak_rss_mb(pid: int) -> float | None:
    """Peak resident memory of process ``pid`` so far (``VmHWM``), in MiB; None elsewhere."""
    kb = _status_kb(pid, "VmHWM")
    return None if kb is None else kb / 1024
