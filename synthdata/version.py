"""The package's version, in one place (the package root and the runs' provenance tags read it)."""
__version__ = "0.1.0"
