"""What the kinds of the simulated truth table are (``truth.csv``, column ``kind``), for every
stage that reads it; a module of its own so that reading the truth needs no renderer."""

#: star-forming regions: the clumps, and knots too faint to count as clumps; their flux fraction
#: decides what the evaluation counts as a clump
STAR_FORMING = ("clump", "knot")
#: no star-forming region: odd objects (in front of or behind the galaxy, anywhere on most of the
#: field) and field sources beside it;
#: volunteers mark both as they look (mostly odd: they are red; real Clump Scout labels hold boxes
#: far out in the field: docs/simulation.md)
ODD_KINDS = ("odd", "field")
#: the kind of a field source (a star or galaxy beside the galaxy): the evaluation ignores them
FIELD = "field"
