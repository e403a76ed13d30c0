"""The `nag` command line. Errors meant for the user print one line, never a traceback."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from nag import installed_version
from nag.errors import NagError
from nag.space import resolve_arch


def _cmd_train_supernet(rest: list[str]) -> int:
    from nag.pipeline.train_supernet import main as train_main

    return train_main(rest)


def _cmd_export_child(args: argparse.Namespace) -> int:
    from nag.data import DataSource, load_test_set
    from nag.export import export_onnx
    from nag.export.evaluate import onnx_predictions
    from nag.space import count_macs, count_params
    from nag.supernet import child
    from nag.supernet.io import load_supernet

    trained = load_supernet(args.supernet)
    space = trained.supernet.space
    arch = resolve_arch(args.arch, space, args.seed)
    started = time.perf_counter()
    static = child(trained.supernet, arch, trained.calibration_float)
    sliced = time.perf_counter()
    classes = trained.meta.get("classes")
    meta = {"nag.classes": json.dumps(classes)} if classes else {}
    data = export_onnx(static, meta)
    exported = time.perf_counter()
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    print(f"architecture {arch.arch_id}: {arch.to_json()}")
    print(f"MACs {count_macs(arch, space) / 1e6:.2f} M, params {count_params(arch, space) / 1e3:.1f} k")
    print(f"slice + BN calibration {1e3 * (sliced - started):.0f} ms, ONNX build {1e3 * (exported - sliced):.0f} ms")
    print(f"wrote {out} ({len(data) / 1e3:.0f} kB)")
    if args.verify:
        test_set = load_test_set(DataSource(), space.input.size, space.input.channels)
        acc = 100.0 * float((onnx_predictions(data, test_set) == test_set.labels.numpy()).mean())
        print(f"ONNX Runtime test accuracy: {acc:.2f}% on {len(test_set)} images")
    return 0


def _cmd_profile_device(args: argparse.Namespace) -> int:
    import logging

    from nag.config import PipelineConfig
    from nag.cost.device import DeviceProfile, packaged_profile
    from nag.cost.profiling import profile_device
    from nag.cost.remote import agent_from_args
    from nag.cost.store import PROFILE_FILE, device_dir
    from nag.space import load_space

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    agent = agent_from_args(args)
    space = load_space(args.space)
    in_bundle = device_dir(args.bundle, args.device) / PROFILE_FILE
    if args.profile_file:
        profile = DeviceProfile.load(args.profile_file)
        if profile.name != args.device:
            print(f"error: {args.profile_file} describes device {profile.name!r}, not {args.device!r}",
                  file=sys.stderr)
            return 2
    elif in_bundle.is_file():
        profile = DeviceProfile.load(in_bundle)
    else:
        profile = packaged_profile(args.device)
    started = time.perf_counter()
    archs = PipelineConfig().profile_archs if args.archs is None else args.archs
    try:
        report = profile_device(args.bundle, space, profile, num_archs=archs, seed=args.seed, agent=agent)
    finally:
        if agent is not None:
            agent.close()
    folder = device_dir(args.bundle, profile.name)
    if report.predictor is None:
        print(f"device {profile.name}: analytic cost ({profile.unit}); nothing to measure. Wrote {folder}")
        return 0
    held = report.holdout["predictor"]
    base = report.holdout["macs_linear_baseline"]
    left_out = "kept: too few were stable to leave them out" if report.fit_on_unstable else "left out"
    on = f" on {agent.where} ({agent.fingerprint()['cpu_model']})" if agent is not None else ""
    print(f"device {profile.name}: {report.measurements} architectures measured{on} "
          f"({report.unstable} flagged unstable and {left_out}) in {time.perf_counter() - started:.0f} s")
    print(f"held-out ({held['n']} architectures): {100 * held['within_10pct']:.1f}% within ±10%, "
          f"mean |error| {100 * held['mean_abs_rel_error']:.1f}%, RMSE {held['rmse']:.4f} {profile.unit}, "
          f"Kendall tau {held['kendall_tau']:.3f}")
    print(f"  MACs-only baseline: {100 * base['within_10pct']:.1f}% within ±10%, "
          f"Kendall tau {base['kendall_tau']:.3f}")
    lo, hi = report.predictor.latency_range
    print(f"latency range {lo:.3f}-{hi:.3f} {profile.unit}; wrote {folder}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nag", description="Budget-conditioned architecture generator")
    p.add_argument("--version", action="version", version=f"nag {installed_version()}",
                   help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("train-supernet", help="train the elastic supernet (see --help of the subcommand)",
                   add_help=False)
    e = sub.add_parser("export-child", help="slice a child out of a trained supernet and write its ONNX model")
    e.add_argument("--supernet", required=True, help="supernet.pt written by train-supernet")
    e.add_argument("--arch", default="random", help="biggest, smallest, random, a JSON string or a .json file")
    e.add_argument("--seed", type=int, default=0, help="seed for --arch random")
    e.add_argument("-o", "--output", required=True, help="where to write the .onnx file")
    e.add_argument("--verify", action="store_true", help="measure its accuracy on the test set in ONNX Runtime")
    d = sub.add_parser("profile-device", help="measure a device's latencies and fit its latency predictor")
    d.add_argument("--device", default="cpu", help="device name (a packaged profile: cpu, flops; or --profile-file)")
    d.add_argument("--bundle", default="bundles/default", help="bundle directory; writes devices/<name>/ in it")
    d.add_argument("--profile-file", help="a device profile JSON for a new device")
    d.add_argument("--space", help="search-space JSON (default: the packaged default space)")
    d.add_argument("--archs", type=int, help="architectures to measure (stratified over MACs)")
    d.add_argument("--seed", type=int, default=0,
                   help="seed for the sampled architectures, their measurement order and the predictor fit")
    # The flags of nag.cost.remote.add_agent_arguments, spelt out: importing nag.cost would slow `nag --help`.
    d.add_argument("--agent", metavar="HOST:PORT", help="time the models on the measurement agent (nag-agent) at "
                                                        "HOST:PORT; everything else runs here")
    d.add_argument("--agent-token-file", type=Path, help="the agent's token (or set NAG_AGENT_TOKEN)")
    d.add_argument("--agent-tls-ca", type=Path, help="PEM root certificate of an agent that serves TLS")
    g = sub.add_parser("generate", help="request a model for a budget from a server (or --local)")
    from nag.client import add_arguments

    add_arguments(g)
    sub.add_parser("serve", help="serve a bundle over gRPC (see --help of the subcommand)", add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train-supernet":
        return _cmd_train_supernet(argv[1:])
    if argv and argv[0] == "serve":
        from nag.server.app import main as serve_main

        return serve_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        if args.command == "export-child":
            return _cmd_export_child(args)
        if args.command == "profile-device":
            return _cmd_profile_device(args)
        if args.command == "generate":
            from nag.client import run

            return run(args)
    except NagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
