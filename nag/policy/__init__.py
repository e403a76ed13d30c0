"""Serving time, above the bundle: the serving frontier, `generate`, request validation and export of a pick."""
