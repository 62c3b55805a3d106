"""crushcell: safety controller for the sealed crushing cell of a Li-ion recycling line."""

__version__ = "0.1.0"
