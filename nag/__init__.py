"""NAG: a budget-conditioned architecture generator and the supernet it slices children from.

Importing the package has no side effects; submodules are imported where they are used.
"""

__version__ = "0.1.0"


def installed_version() -> str:
    """The installed distribution's version (`__version__` when running from a source tree)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nag")
    except PackageNotFoundError:
        return __version__
