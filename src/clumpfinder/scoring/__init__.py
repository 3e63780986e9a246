"""The scoring stage of clumpfinder (see the package docstring)."""
