"""The graph forms a served child can take, named here so that the config can name them without loading
the ONNX builder (and with it torch and onnx); `nag.export.onnx_builder` says what each form emits."""

from enum import StrEnum


class GraphForm(StrEnum):
    """Which ops express the child; every form computes the same function."""

    STANDARD = "standard"
    PORTABLE = "portable"
    MOBILE = "mobile"
