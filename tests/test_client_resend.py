"""channel()'s resend of a call that ended INTERNAL after reply headers had arrived, which gRPC's own
retry policy never covers: a real gRPC server over loopback fails the first attempts that way."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager

import grpc
import pytest

from nag.client import RESENDS_AFTER_HEADERS, channel
from nag.v1 import generator_pb2 as pb
from nag.v1 import generator_pb2_grpc as pb_grpc


class HeadersThenInternal(pb_grpc.ArchitectureGeneratorServiceServicer):
    """Sends reply headers, then ends the call INTERNAL, for the first `failures` calls; then answers."""

    work_s = 0.5  # each failed attempt takes this long

    def __init__(self, failures: int) -> None:
        self.failures, self.calls, self.timeouts = failures, 0, []
        self.lock = threading.Lock()

    def ListDevices(self, request, context):  # type: ignore[no-untyped-def]
        with self.lock:
            self.calls += 1
            self.timeouts.append(context.time_remaining())
            fail = self.calls <= self.failures
        if fail:
            time.sleep(self.work_s)
            context.send_initial_metadata((("replica", "dying"),))
            context.abort(grpc.StatusCode.INTERNAL, "Stream removed")
        return pb.ListDevicesResponse(devices=[pb.Device(name="cpu")])


@contextmanager
def _serve(servicer: HeadersThenInternal) -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_ArchitectureGeneratorServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(0)


@pytest.fixture
def flaky() -> Iterator[tuple[str, HeadersThenInternal]]:
    servicer = HeadersThenInternal(failures=RESENDS_AFTER_HEADERS)
    with _serve(servicer) as address:
        yield address, servicer


def test_a_call_reset_after_headers_is_sent_again(flaky: tuple[str, HeadersThenInternal]) -> None:
    address, servicer = flaky
    with channel(address) as ch:
        reply = pb_grpc.ArchitectureGeneratorServiceStub(ch).ListDevices(pb.ListDevicesRequest(), timeout=5)
    assert [d.name for d in reply.devices] == ["cpu"]
    assert servicer.calls == RESENDS_AFTER_HEADERS + 1
    # every resend carries what was left of the one deadline, not a fresh 5 s (gRPC sends the timeout
    # rounded up to about 0.1 s)
    for attempt, left in enumerate(servicer.timeouts):
        assert left < 5 - attempt * HeadersThenInternal.work_s + 0.2, servicer.timeouts


def test_gRPC_alone_does_not_retry_after_headers_and_resends_are_bounded() -> None:
    servicer = HeadersThenInternal(failures=RESENDS_AFTER_HEADERS + 1)
    with _serve(servicer) as address:
        with channel(address, retries=False) as ch, pytest.raises(grpc.RpcError) as exc:
            pb_grpc.ArchitectureGeneratorServiceStub(ch).ListDevices(pb.ListDevicesRequest(), timeout=30)
        assert exc.value.code() == grpc.StatusCode.INTERNAL
        assert servicer.calls == 1  # without channel()'s resends the call is lost
        servicer.calls = 0
        with channel(address) as ch, pytest.raises(grpc.RpcError) as exc:
            pb_grpc.ArchitectureGeneratorServiceStub(ch).ListDevices(pb.ListDevicesRequest(), timeout=30)
        assert exc.value.code() == grpc.StatusCode.INTERNAL
        assert servicer.calls == RESENDS_AFTER_HEADERS + 1  # gRPC's 5 attempts did not apply; our resends ran out
