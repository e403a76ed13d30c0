"""Build hook: generate the gRPC stubs (`nag_agent/v1/`) from the .proto whenever the package is built.

The stubs are never committed. They are generated with whatever grpcio-tools the build environment has
(a board's Python may be older than the host's), and the runtime dependencies on grpcio and protobuf get
lower bounds read from the generated files themselves, so that an installed agent never has a runtime
older than its stubs. An editable install (`pip install -e agent`) writes them into the source tree.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PROTO = "nag_agent/v1/agent.proto"
# agent/proto/nag_agent is a link to the repository's proto/nag_agent; the repository's proto/ serves where
# the link was not kept.
PROTO_ROOTS = [ROOT / "proto", ROOT.parent / "proto"]
BASE_REQUIREMENTS = ["onnxruntime>=1.14", "numpy>=1.19"]


def _proto_root() -> Path:
    for root in PROTO_ROOTS:
        if (root / PROTO).is_file():
            return root
    raise RuntimeError(f"cannot find {PROTO} under {[str(r) for r in PROTO_ROOTS]}")


def generate_stubs(out_dir: Path) -> list[Path]:
    """Run protoc (from grpcio-tools, in-process); returns the files written under out_dir."""
    from importlib import resources

    from grpc_tools import protoc

    well_known = str(resources.files("grpc_tools") / "_proto")
    root = _proto_root()
    (out_dir / "nag_agent" / "v1").mkdir(parents=True, exist_ok=True)
    args = ["grpc_tools.protoc", f"-I{root}", f"-I{well_known}", f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}", f"--pyi_out={out_dir}", str(root / PROTO)]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    init = out_dir / "nag_agent" / "v1" / "__init__.py"
    if not init.exists():
        init.write_text("")
    stem = PROTO[: -len(".proto")]
    written = [init] + [out_dir / f"{stem}{suffix}" for suffix in ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")]
    missing = [str(p) for p in written if not p.is_file()]
    if missing:
        raise RuntimeError(f"protoc did not write {missing}")
    return written


def runtime_requirements() -> list[str]:
    """grpcio and protobuf no older than the stubs this build generates say they need."""
    with tempfile.TemporaryDirectory() as tmp:
        files = generate_stubs(Path(tmp))
        pb2 = files[1].read_text()
        grpc_stub = files[2].read_text()
    requirements = list(BASE_REQUIREMENTS)
    found = re.search(r"ValidateProtobufRuntimeVersion\(\s*[\w.]+,\s*(\d+),\s*(\d+),\s*(\d+)", pb2)
    if found:
        major, minor, patch = (int(v) for v in found.groups())
        requirements.append(f"protobuf>={major}.{minor}.{patch},<{major + 1}")
    else:
        requirements.append("protobuf")
    version = re.search(r"GRPC_GENERATED_VERSION\s*=\s*'([\d.]+)'", grpc_stub)
    requirements.append(f"grpcio>={version.group(1)}" if version else "grpcio")
    return requirements


class BuildPyWithStubs(build_py):
    """build_py, then the gRPC stubs on top (fresh from the .proto, whatever stale copy the tree has)."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            generate_stubs(ROOT)
        else:
            self._stubs = generate_stubs(Path(self.build_lib))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = list(super().get_outputs(include_bytecode))
        for path in getattr(self, "_stubs", []):
            if str(path) not in outputs:
                outputs.append(str(path))
        return outputs


setup(cmdclass={"build_py": BuildPyWithStubs}, install_requires=runtime_requirements())
