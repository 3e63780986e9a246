"""The crowd stage of clumpfinder (see the package docstring)."""
