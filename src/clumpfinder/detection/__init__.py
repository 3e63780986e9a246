"""The detection stage of clumpfinder (see the package docstring)."""
