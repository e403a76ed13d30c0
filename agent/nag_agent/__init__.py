"""NAG's measurement agent: times ONNX models under a runtime contract on the device it runs on, over gRPC.

It depends on ONNX Runtime, gRPC, protobuf and numpy only (never on NAG or torch), so that it installs on a
small Linux board: `pip install ./agent`, then `nag-agent --port 50061 --token-file TOKEN`.
"""

__version__ = "0.1.0"
