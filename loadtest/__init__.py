"""Load tests and benchmarks for the served models.

* ``loadtest/locustfile.py`` - Locust users (HTTP and gRPC, classifier and ensemble) with pass/fail
  thresholds; ``python -m loadtest.run`` runs them headless against an embedded server.
* ``loadtest.perf`` - perf_analyzer sweeps (``loadtest/install_perf_analyzer.sh`` installs the binary).
* ``loadtest.baseline`` - the seed's Flask app, the baseline every server is compared with.
* ``loadtest.ceiling`` - in-process ONNX Runtime throughput: what no server can beat.
* ``loadtest.loadgen`` - one closed-loop load generator for Flask and Triton (HTTP and gRPC).
* ``loadtest.bench`` - the benchmark report (bench/report.md, bench/results.json, plots).

Importing this package imports nothing heavy (Locust monkey-patches the standard library with gevent
when imported, so only the locustfile imports it).
"""
