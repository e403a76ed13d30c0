"""The elastic supernet and the static children sliced out of it."""

from nag.supernet.model import Supernet
from nag.supernet.static import StaticChild, calibrate_bn, child, extract_child

__all__ = ["StaticChild", "Supernet", "calibrate_bn", "child", "extract_child"]
