"""Bundles: one directory holding everything the server needs, with a verified manifest."""

from nag.bundle.bundle import (
    MANIFEST_FILE,
    Bundle,
    BundleError,
    DeviceModels,
    load_bundle,
    load_evaluator,
    load_generator,
    save_evaluator,
    save_generator,
    write_manifest,
)

__all__ = [
    "MANIFEST_FILE",
    "Bundle",
    "BundleError",
    "DeviceModels",
    "load_bundle",
    "load_evaluator",
    "load_generator",
    "save_evaluator",
    "save_generator",
    "write_manifest",
]
