"""The labels stage of clumpfinder (see the package docstring)."""
