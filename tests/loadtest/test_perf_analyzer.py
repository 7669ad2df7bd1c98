"""The perf_analyzer wrapper: a real short sweep when the binary is installed, and its CSV parser."""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path

import pytest

from build_tools.server import TritonServer
from loadtest import perf
from loadtest.errors import PerfAnalyzerError
from tests.support.tools import tool_missing

# A CSV the real perf_analyzer 2.51.0 wrote here with -f out.csv --verbose-csv.
REAL_CSV = """Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,\
Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency,Avg latency,\
request/response,response wait
4,4148.55,4,475,668,42,2148,505,1,3144,4765,5817,8287,3846,5,3830
"""


def test_parse_csv_reads_typed_rows_when_csv_comes_from_perf_analyzer(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    path.write_text(REAL_CSV)
    (row,) = perf.parse_csv(path, "mnist_classifier", "grpc", "system", batch_size=4)
    assert row.concurrency == 4 and isinstance(row.concurrency, int)
    assert row.inferences_per_s == pytest.approx(4148.55)
    assert row.requests_per_s == pytest.approx(4148.55 / 4)
    assert (row.p50_us, row.p99_us, row.server_queue_us, row.server_compute_infer_us) == (3144, 8287, 668, 2148)
    assert row.label == "mnist_classifier grpc b4 shm=system"


def test_parse_csv_raises_when_file_is_not_a_perf_analyzer_csv(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(PerfAnalyzerError, match="missing columns"):
        perf.parse_csv(path, "m", "http", "none", 1)
    with pytest.raises(PerfAnalyzerError, match="no CSV"):
        perf.parse_csv(tmp_path / "absent.csv", "m", "http", "none", 1)


def test_input_data_holds_one_serialized_png_per_step_when_written(tmp_path: Path) -> None:
    data = json.loads(perf.write_input_data(tmp_path / "in.json", count=3).read_text())["data"]
    assert len(data) == 3
    raw = base64.b64decode(data[0]["image_bytes"]["b64"])
    (length,) = struct.unpack("<I", raw[:4])
    assert length == len(raw) - 4 and raw[4:12] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.server
def test_sweep_returns_parsed_rows_when_perf_analyzer_measures_the_real_server(
    embedded_server: TritonServer, tmp_path: Path
) -> None:
    binary = perf.find_perf_analyzer()
    if binary is None:
        tool_missing(f"perf_analyzer is not installed; {perf.INSTALL_HINT}")
    settings = perf.PerfSettings(measurement_ms=500, max_trials=3, stability_percentage=50)
    rows = perf.sweep(embedded_server.http_url, embedded_server.grpc_url, models=("mnist_classifier",),
                      batch_sizes=(2,), concurrencies=(2,), workdir=tmp_path / "raw", settings=settings,
                      progress=False, headers=embedded_server.admin_headers)
    rows += perf.sweep(embedded_server.http_url, None, models=("mnist",), concurrencies=(1,),
                       shared_memory=("system",), workdir=tmp_path / "raw", settings=settings, progress=False,
                       headers=embedded_server.admin_headers)
    assert [(r.model, r.protocol, r.shared_memory, r.batch_size, r.concurrency) for r in rows] == [
        ("mnist_classifier", "http", "none", 2, 2),
        ("mnist_classifier", "grpc", "none", 2, 2),
        ("mnist", "http", "system", 1, 1),
    ]
    for row in rows:
        assert row.inferences_per_s > 0 and row.p99_us >= row.p50_us > 0
    csv_path = perf.save_csv(rows, tmp_path / "perf.csv")
    assert csv_path.read_text().count("\n") == 4
    png = perf.plot(rows, tmp_path / "perf.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_perf_inputs_equal_what_the_generator_writes_when_regenerated() -> None:
    from loadtest import perf_inputs

    documents = perf_inputs.input_data()
    committed = sorted(p.stem for p in perf_inputs.FOLDER.glob("*.json"))
    assert committed == sorted(documents), "run `python -m loadtest.perf_inputs` and commit the files"
    for model, document in documents.items():
        path = perf_inputs.FOLDER / f"{model}.json"
        assert path.read_text() == perf_inputs.render(document), f"{path} is stale: run python -m loadtest.perf_inputs"


def test_perf_inputs_hold_serialized_bytes_elements_when_input_is_bytes() -> None:
    from loadtest import perf_inputs

    steps = json.loads((perf_inputs.FOLDER / "mnist.json").read_text())["data"]
    assert len(steps) == 10
    raw = base64.b64decode(steps[0]["image_bytes"]["b64"])
    (length,) = struct.unpack("<I", raw[:4])
    assert length == len(raw) - 4 and raw[4:12] == b"\x89PNG\r\n\x1a\n"
