"""Static child -> ONNX, built directly from the plan and the sliced weights."""

from nag.export.onnx_builder import INPUT_NAME, OPSET, OUTPUT_NAME, GraphForm, build_onnx, export_onnx

__all__ = ["INPUT_NAME", "OPSET", "OUTPUT_NAME", "GraphForm", "build_onnx", "export_onnx"]
