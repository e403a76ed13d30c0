"""`nag-agent`: serve measurements on this device until SIGTERM or SIGINT.

    nag-agent --port 50061 --token-file /etc/nag-agent/token [--host 0.0.0.0] [--tls-cert C --tls-key K]

Errors in the arguments are one line on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from nag_agent import __version__

TOKEN_ENV = "NAG_AGENT_TOKEN"


class UsageError(Exception):
    pass


def _token(args: argparse.Namespace) -> str:
    if args.token_file:
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as exc:
            raise UsageError(f"cannot read --token-file {args.token_file}: {exc.strerror}") from None
        if not token:
            raise UsageError(f"--token-file {args.token_file} is empty")
        return token
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise UsageError(f"a token is required: --token-file FILE (or set {TOKEN_ENV})")
    return token


def _tls(args: argparse.Namespace) -> tuple[bytes, bytes] | None:
    if bool(args.tls_cert) != bool(args.tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    if not args.tls_cert:
        return None
    try:
        return Path(args.tls_key).read_bytes(), Path(args.tls_cert).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read the TLS key or certificate: {exc.filename}: {exc.strerror}") from None


def _megabytes(name: str, value: float) -> int:
    if not value > 0:
        raise UsageError(f"{name} must be > 0, got {value}")
    return int(value * 1024 * 1024)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nag-agent", description="Time ONNX models on this device for a NAG host")
    p.add_argument("--version", action="version", version=f"nag-agent {__version__}")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    p.add_argument("--port", type=int, default=50061, help="gRPC port; 0 picks a free one")
    p.add_argument("--token-file", help=f"file holding the token callers must send (or set {TOKEN_ENV})")
    p.add_argument("--tls-cert", help="PEM certificate chain (with --tls-key) to serve TLS")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert")
    p.add_argument("--max-model-mb", type=float, default=64.0, help="largest model accepted, in MiB")
    p.add_argument("--max-request-mb", type=float, default=512.0, help="largest total of one measurement's models")
    p.add_argument("--max-models", type=int, default=256, help="most models in one measurement")
    p.add_argument("--max-waiting", type=int, default=4,
                   help="measurements that may wait behind the running one; more get RESOURCE_EXHAUSTED")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from nag_agent.server import Limits, start_agent

        if not 0 <= args.port <= 65535:
            raise UsageError(f"--port must lie in [0, 65535], got {args.port}")
        if args.max_models < 1 or args.max_waiting < 0:
            raise UsageError("--max-models must be >= 1 and --max-waiting >= 0")
        limits = Limits(max_model_bytes=_megabytes("--max-model-mb", args.max_model_mb),
                        max_request_bytes=_megabytes("--max-request-mb", args.max_request_mb),
                        max_models=args.max_models, max_waiting=args.max_waiting)
        token, tls = _token(args), _tls(args)
        running = start_agent(token, args.host, args.port, limits, tls)
    except (UsageError, OSError) as exc:
        print(f"nag-agent: error: {exc}", file=sys.stderr)
        return 2
    facts = running.service.facts
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"nag-agent {__version__} listening on {args.host}:{running.port}{' (TLS)' if tls else ''}: "
          f"{facts['cpu_model']}, ONNX Runtime {facts['onnxruntime_version']} {facts['providers']}", flush=True)
    while not stop.wait(0.5):
        pass
    running.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
