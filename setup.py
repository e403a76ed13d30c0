"""Build hook: generate the gRPC stubs (`nag/v1/`) from `proto/` whenever setuptools builds the package.

All metadata lives in pyproject.toml. The stubs are never committed (git ignores `nag/v1/`), so a wheel
built from a clone or from the sdist gets them here, from `grpcio-tools` (a build requirement, not a
runtime dependency). A regular build writes them into the build directory only; an editable install
(`pip install -e .`) writes them into the source tree, where the editable install imports them from,
the same files `make proto` writes.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PROTO_ROOT = "proto"
PROTOS = ["nag/v1/generator.proto"]
STUB_PACKAGE = "nag/v1"


def generate_stubs(out_dir: Path) -> list[Path]:
    """Run protoc (from grpcio-tools, in-process) on PROTOS; returns the files written under out_dir."""
    from importlib import resources

    from grpc_tools import protoc

    package_dir = out_dir / STUB_PACKAGE
    package_dir.mkdir(parents=True, exist_ok=True)
    well_known = resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{ROOT / PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--pyi_out={out_dir}",
        *(str(ROOT / PROTO_ROOT / proto) for proto in PROTOS),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    init = package_dir / "__init__.py"
    if not init.exists():
        init.write_text("")
    written = [init]
    for proto in PROTOS:
        stem = Path(proto).with_suffix("")
        written += [out_dir / f"{stem}_pb2.py", out_dir / f"{stem}_pb2_grpc.py", out_dir / f"{stem}_pb2.pyi"]
    missing = [str(p) for p in written if not p.is_file()]
    if missing:
        raise RuntimeError(f"protoc did not write {missing}")
    return written


class BuildPyWithStubs(build_py):
    """build_py, then the gRPC stubs on top (fresh from proto/, whatever stale copy the tree has)."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            generate_stubs(ROOT)
        else:
            self._stubs = generate_stubs(Path(self.build_lib))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = list(super().get_outputs(include_bytecode))
        for path in getattr(self, "_stubs", []):
            if str(path) not in outputs:
                outputs.append(str(path))
        return outputs


setup(cmdclass={"build_py": BuildPyWithStubs})
