"""Seed techniques against the base recipe: AttentiveNAS in supernet training, FP-NAS in generator training.

    python -m benchmarks.ablations                       # both parts (about 20 minutes on 2 cores)
    python -m benchmarks.ablations --part fpnas --bundle bundles/default
    python -m benchmarks.ablations --part attentive --quick

AttentiveNAS: the `demo` supernet profile trained with uniform, attentive-best and attentive-worst
middle children (same seed, same steps). Each supernet scores one fixed, MACs-stratified set of
architectures on validation images; at each MACs budget the best (the frontier) and the worst child
within budget are judged on the test set, paired against uniform with a bootstrap interval.

FP-NAS: the bundle's evaluator and budgets, the generator trained with a fixed sample count (PNAG),
adaptive sampling K = λ·H, coarse-to-fine, and both; several seeds. Each trained policy is judged
the same way: its picks at every budget (feasibility by the device's predictor, predicted accuracy)
and its mean evaluator reward on fresh samples.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.ablations_attentive import QUICK_ATTENTIVE, AttentiveSettings, run_attentive
from benchmarks.ablations_fpnas import QUICK_FPNAS, FpnasSettings, run_fpnas
from benchmarks.results_io import RESULTS, machine, write_results
from nag.bundle import load_bundle
from nag.config import MIDDLE_SAMPLERS
from nag.errors import NagError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", choices=["all", "attentive", "fpnas"], default="all")
    p.add_argument("--bundle", default="bundles/default", help="bundle for the FP-NAS part")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="tiny supernets, one seed, few steps (tests, CI)")
    p.add_argument("--profile", default=AttentiveSettings.profile,
                   help="supernet training profile of the attentive part (demo, default, ...)")
    p.add_argument("--samplers", default=",".join(MIDDLE_SAMPLERS),
                   help="middle-child samplers to train and compare, the first being the baseline")
    p.add_argument("--runs", type=Path, default=Path("runs/ablations"), help="where supernets are trained")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--name", default="ablations")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result: dict[str, Any] = {"machine": machine()}
    md = "# Seed techniques: AttentiveNAS and FP-NAS against the base recipe\n\n"
    try:
        if args.part in ("all", "attentive"):
            samplers = tuple(s.strip() for s in args.samplers.split(",") if s.strip())
            unknown = sorted(set(samplers) - set(MIDDLE_SAMPLERS))
            if unknown or len(samplers) < 2:
                raise NagError(f"--samplers takes at least two of {', '.join(MIDDLE_SAMPLERS)}; got {args.samplers!r}")
            settings = replace(QUICK_ATTENTIVE if args.quick else AttentiveSettings(profile=args.profile),
                               samplers=samplers)
            result["attentive"], text = run_attentive(settings, args.runs / settings.profile)
            md += text + "\n"
        if args.part in ("all", "fpnas"):
            result["fpnas"], text = run_fpnas(args.bundle, args.device, QUICK_FPNAS if args.quick else FpnasSettings())
            result["bundle_id"] = load_bundle(args.bundle).bundle_id
            md += text
    except NagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_results(args.name, result, md, args.out)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
