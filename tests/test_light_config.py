"""Importing the config loads neither torch nor onnx (issue 40): the CLI and tools that only read settings
stay fast; the config once pulled in the data loaders and the ONNX builder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_importing_the_config_loads_no_torch_and_no_onnx() -> None:
    code = "import nag.config, sys; assert 'torch' not in sys.modules and 'onnx' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_the_names_the_config_took_over_are_the_same_objects() -> None:
    from nag.config.data import DataSource
    from nag.data import DataSource as from_data
    from nag.export import GraphForm
    from nag.graph_form import GraphForm as from_graph_form

    assert DataSource is from_data
    assert GraphForm is from_graph_form
