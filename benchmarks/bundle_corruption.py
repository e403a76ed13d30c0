"""Every file of a bundle corrupted four ways (garbage, truncated, one flipped bit, empty), the manifest
included: does `nag generate --local` exit 2 with a one-line error each time?

    python -m benchmarks.bundle_corruption --bundle bundles/default

Runs the CLI in-process on a copy of the bundle (the original is never touched) and records each case's
exit code and stderr line count.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import sys
import tempfile
from pathlib import Path

from benchmarks.results_io import machine, markdown_table, write_results
from nag.cli import main as nag_main


def corruptions(data: bytes) -> dict[str, bytes]:
    flipped = bytearray(data or b"\x00")
    flipped[len(flipped) // 2] ^= 0x40
    return {"garbage": b"\x00garbage\xff{[", "truncated": data[: len(data) // 2], "bit flip": bytes(flipped),
            "empty": b""}


def run_cli(bundle: Path, out: Path) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = nag_main(["generate", "--local", "--bundle", str(bundle), "--macs", "5e6", "-o",
                         str(out)])
    return code, err.getvalue()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", default="bundles/default", help="bundle to copy and corrupt")
    args = p.parse_args(argv)
    source = Path(args.bundle)
    work = Path(tempfile.mkdtemp(prefix="nag-corrupt-"))
    copy = work / "bundle"
    shutil.copytree(source, copy)
    intact, _ = run_cli(copy, work / "m.onnx")
    cases = []
    for rel in sorted(p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file()):
        original = (source / rel).read_bytes()
        for how, data in corruptions(original).items():
            (copy / rel).write_bytes(data)
            code, err = run_cli(copy, work / "m.onnx")
            lines = err.strip().splitlines()
            one_line = len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err
            cases.append({"file": rel, "corruption": how, "exit": code, "one_line": one_line,
                          "message": lines[0][:200] if lines else ""})
        (copy / rel).write_bytes(original)
    shutil.rmtree(work)
    good = sum(c["exit"] == 2 and c["one_line"] for c in cases)
    files = sorted({c["file"] for c in cases})
    data = {"machine": machine(), "bundle": args.bundle, "intact_exit": intact, "cases": cases, "good": good,
            "total": len(cases)}
    rows = [[f"`{f}`", *(next(f"{c['exit']}{'' if c['one_line'] else ' (not one line)'}" for c in cases
                            if c["file"] == f and c["corruption"] == how) for how in corruptions(b"x"))]
            for f in files]
    md = (f"# Bundle corruption (`{args.bundle}`)\n\n`nag generate --local` on a copy with one file corrupted: "
          f"**{good}/{len(cases)}** cases exit 2 with a one-line error (the intact copy exits {intact}). "
          "Cells: exit code.\n\n")
    md += markdown_table(["file", *corruptions(b"x")], rows)
    write_results("bundle_corruption", data, md)
    print(md)
    return 0 if good == len(cases) and intact == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
