"""A throwaway PostgreSQL server for tests: the Debian package's binaries, its own folder, a free port.

initdb/pg_ctl refuse to run as root, so as root they run as the `postgres` user the package creates.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from build_tools.server import free_port


def find_bindir() -> Path | None:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(candidate, "initdb").is_file() and Path(candidate, "pg_ctl").is_file():
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _as_owner(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextlib.contextmanager
def running_postgres() -> Iterator[str]:
    """Yields a URL (postgresql://app@127.0.0.1:PORT/postgres); stops the server and removes its folder."""
    bindir = find_bindir()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL server binaries (initdb, pg_ctl) not found; install the postgresql package")
    # Not under pytest's temp root: that is private to root, and the server runs as `postgres`.
    root = Path(tempfile.mkdtemp(prefix="tdk-postgres."))
    root.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    port = free_port()
    data, log = root / "data", root / "log"
    try:
        subprocess.run(_as_owner([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "app"]),
                       check=True, capture_output=True, timeout=120)
        subprocess.run(
            _as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o",
                       f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start"]),
            check=True, capture_output=True, timeout=120,
        )
        yield f"postgresql://app@127.0.0.1:{port}/postgres"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(_as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                           capture_output=True, timeout=60, check=False)
        shutil.rmtree(root, ignore_errors=True)
