"""clumpfinder: giant star-forming clumps with Faster R-CNN trained on volunteer labels.

One module per workflow stage: ``simulate`` (GalSim survey), ``volunteers`` (simulated
classifications), ``zooniverse`` (export format), ``consensus``, ``labels`` (splits, COCO),
``detector`` (Faster R-CNN builder), ``train``, ``evaluate``, ``summary``; ``io`` holds the atomic
writers shared by all.
"""

__version__ = "0.1.0"
