"""NAG: a budget-conditioned architecture generator and the supernet it slices children from.

Importing the package has no side effects; submodules are imported where they are used.
"""

__version__ = "0.1.0"
