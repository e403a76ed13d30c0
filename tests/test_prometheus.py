"""A real Prometheus (Debian's package) scrapes the server: the first errors after a start show in `increase()`."""

from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import grpc
import pytest

from nag.client import channel
from nag.server.app import RunningServer, ServerOptions
from nag.v1 import generator_pb2 as pb
from nag.v1 import generator_pb2_grpc as pb_grpc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _query(port: int, expr: str) -> list[dict]:  # type: ignore[type-arg]
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    reply = json.loads(urllib.request.urlopen(url, timeout=5).read())
    assert reply["status"] == "success", reply
    return list(reply["data"]["result"])


def _wait_for(predicate, seconds: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


@pytest.mark.slow
def test_prometheus_sees_error_counters_rise_from_zero(tiny_bundle: Path, tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    assert binary, "needs Debian's prometheus package (.ci/run installs it: apt-get install prometheus)"
    running = RunningServer(ServerOptions(bundle=tiny_bundle, port=0, metrics_port=0))
    running.load()
    web = _free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(f"global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: nag\n    static_configs:\n"
                      f"      - targets: ['127.0.0.1:{running.metrics_port}']\n")
    prom = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
                             f"--web.listen-address=127.0.0.1:{web}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        def scraped_twice() -> bool:
            try:
                return bool(_query(web, 'count_over_time(up{job="nag"}[1m]) >= 2'))
            except OSError:
                return False

        _wait_for(scraped_twice, 60, "two scrapes")
        errors = 'nag_requests_total{method="GenerateForBudget",code="INVALID_ARGUMENT"}'
        (before,) = _query(web, errors)
        assert float(before["value"][1]) == 0.0  # the series exists before the first error
        with channel(f"127.0.0.1:{running.port}") as ch:
            stub = pb_grpc.ArchitectureGeneratorServiceStub(ch)
            for _ in range(2):
                with pytest.raises(grpc.RpcError):
                    stub.GenerateForBudget(pb.GenerateForBudgetRequest(macs=math.nan), timeout=10)
        _wait_for(lambda: float(_query(web, errors)[0]["value"][1]) == 2.0, 30, "the errors to be scraped")
        (rise,) = _query(web, 'sum(increase(nag_requests_total{code!="OK"}[1m]))')
        assert float(rise["value"][1]) > 0.0  # 0 when the series first appeared with the errors
        (rss,) = _query(web, 'process_resident_memory_bytes{job="nag"}')
        assert float(rss["value"][1]) > 1e6
        (info,) = _query(web, "nag_build_info")
        assert info["metric"]["bundle_id"] == running.service.bundle.bundle_id
    finally:
        prom.terminate()
        prom.wait(timeout=30)
        running.stop(0, drain=0)
