"""Clump catalogues from a trained detector: galaxies from any source, the detector, post-processing,
photometry, tables, and the ``clumpfinder`` command-line tool."""
