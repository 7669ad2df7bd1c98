"""`triton-repo serve` as a user runs it, for the tests of the CLI's server: a real subprocess in its
own session, ready when it prints its banner, stopped with Ctrl-C (SIGINT) as a user stops it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

BANNER = "Press Ctrl-C"


def serve(cwd: Path, repo: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start `triton-repo serve --model-repository REPO ARGS...` (no health sidecar port clash: port 0)."""
    cmd = [str(Path(sys.executable).with_name("triton-repo")), "serve", "--model-repository", str(repo),
           "--timeout", "120", "--health-port", "0", *args]
    return subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)


def wait_banner(proc: subprocess.Popen[str]) -> str:
    """Everything serve printed up to its banner; fails with its output when it ended before."""
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(BANNER):
            return "".join(seen)
    raise AssertionError(f"serve ended (rc {proc.wait()}) before it was ready: {''.join(seen)}{proc.stderr.read()}")


def stop(proc: subprocess.Popen[str], timeout_s: float = 60.0) -> tuple[int, str, float]:
    """Ctrl-C, then the exit status, stderr and the seconds it took (killed after timeout_s)."""
    started = time.monotonic()
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
    return proc.returncode, err, time.monotonic() - started
