"""The data stage of clumpfinder (see the package docstring)."""
