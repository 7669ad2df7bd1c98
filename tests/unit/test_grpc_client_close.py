"""The gRPC client closes its channel once: tritonclient's __del__ closing it again at interpreter exit
hung Locust runs (a gRPC mutex, taken from the garbage collector)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from triton_api import TritonClient

ROOT = Path(__file__).resolve().parents[2]


class _CountingChannel:
    def __init__(self, channel: object) -> None:
        self.channel, self.closes = channel, 0

    def close(self) -> None:
        self.closes += 1
        self.channel.close()  # type: ignore[attr-defined]


def test_grpc_client_closes_its_channel_once_when_closed_twice() -> None:
    client = TritonClient("127.0.0.1:1", "grpc")
    counting = _CountingChannel(client._client._channel)
    client._client._channel = counting
    client.close()
    client.close()
    client._client.__del__()
    assert counting.closes == 1


def test_grpc_client_leaves_its_channel_alone_when_the_interpreter_exits() -> None:
    # A client left in a reference cycle is collected at exit: its channel must not be closed there.
    code = textwrap.dedent("""
        import atexit, sys
        from triton_api import TritonClient
        client = TritonClient("127.0.0.1:1", "grpc")
        inner = client._client
        real = inner._channel
        class Spy:
            def close(self):
                sys.stderr.write("closed at exit\\n")
                real.close()
        inner._channel = Spy()
        inner.cycle = inner
        del client, inner
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "closed at exit" not in out.stderr
