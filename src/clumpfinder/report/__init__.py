"""The report stage of clumpfinder (see the package docstring)."""
