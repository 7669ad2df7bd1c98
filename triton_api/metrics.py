"""Triton's Prometheus metrics endpoint: scrape it, read one metric summed over its series.

Tests and tools read `nv_*` counters from here instead of each parsing the text format themselves.
"""

from __future__ import annotations

import logging
import re
import urllib.error
import urllib.request

from build_tools.errors import ClientError

logger = logging.getLogger(__name__)

_SERIES = re.compile(r"^(?P<name>[A-Za-z_:][\w:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)", re.MULTILINE)
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(metrics_url: str, timeout_s: float = 10.0) -> str:
    """The endpoint's text (Prometheus exposition format); `metrics_url` is http://HOST:PORT/metrics."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=timeout_s) as r:
            return r.read().decode()
    except (urllib.error.URLError, OSError) as e:
        raise ClientError(f"cannot scrape {metrics_url} ({e}); expected Triton's metrics endpoint there") from e


def metric_series(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every series of metric `name`: (labels, value)."""
    series = []
    for m in _SERIES.finditer(text):
        if m.group("name") == name:
            labels = dict(_LABEL.findall(m.group("labels") or ""))
            series.append((labels, float(m.group("value"))))
    return series


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The sum of `name` over the series whose labels include `labels`; None when there is none."""
    values = [v for lab, v in metric_series(text, name) if all(lab.get(k) == want for k, want in labels.items())]
    return sum(values) if values else None
