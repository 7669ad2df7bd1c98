"""The CI-sized soak (issue 17): the ensemble at about 80 % of its peak, 0 failures, flat memory.

`make soak` is the long form (10 minutes, its own server); this one runs about a minute against
the session's server and prints the same summary.
"""

from __future__ import annotations

import pytest

from build_tools.server import TritonServer
from loadtest.soak import soak

pytestmark = pytest.mark.server


def test_soak_has_no_failures_and_flat_memory_when_run_at_80_percent_of_peak(embedded_server: TritonServer) -> None:
    assert embedded_server.process is not None
    result = soak(embedded_server.http_url, embedded_server.process.pid, duration_s=50.0, concurrencies=(1, 2, 4),
                  max_growth=0.10, progress=False)
    print("\n" + result.summary())
    for s in result.slices:
        print(f"  {s.t_s:5.0f} s: {s.throughput_rps:6.0f} req/s, p99 {s.p99_ms:6.1f} ms, {s.failures} failed, "
              f"RSS {s.rss_mib:7.1f} MiB")
    assert result.failures == 0, [s.first_error for s in result.slices if s.failures]
    assert result.rss_growth() <= 0.10
