"""clumpfinder: giant star-forming clumps with Faster R-CNN trained on volunteer labels.

One sub-package per stage of the DAG, in the order data flow (``LAYERS``); a module imports only
the shared top-level modules, its own stage and earlier stages (tests/test_packaging.py checks it):

    (shared)   io (atomic writes, logging), tables (reading input tables), boxes (label-sized
               boxes, the detector's crop window), imaging (the colour composite, FITS/PNG pixels, reading a labelled image),
               metrics (completeness, purity, F1, bootstrap), config (cross-field checks of a
               configuration, the rules' per-backbone settings, the import walk)
    data       simulate (GalSim survey), zooniverse (export format), volunteers (simulated clicks),
               morphology (Galaxy-Zoo-style votes for pretraining), subjects (subject lists),
               download (hips2fits cutouts), catalogue (published clump tables), realism
    crowd      swap (per-subject SWAP), sites (correlated false clicks), boxem (EM box consensus),
               consensus (clicks -> boxes)
    labels     coco (COCO JSON, nested subsets), splits (train/val/test by galaxy)
    detection  detector (Faster R-CNN builder, model files, images as tensors, prediction, the
               dihedral transform), loop (the one optimisation loop: schedule, clipping,
               evaluations, best weights, checkpoints), train (the detector), pretrain (galaxy
               pretraining of the encoder)
    scoring    evaluate (COCO evaluation, threshold choice), classical (the classical finder)
    clumps     catalogues from a trained detector: sources (galaxies from the survey, FITS or
               PNG/JPEG folders), model (the exported detector), measure (post-processing and
               photometry), catalogue (the pipeline), tables (FITS/CSV, overlays), validate
               (against a simulated truth), cli (the `clumpfinder` command)
    partnership  the export replayed in time order: replay (retirement, strategies), machine (the
               detector as a volunteer), effort (curves, human shares, skills), run (from files)
    report     summary (tables, headline, Markdown/HTML), figures

``scripts/*.py`` (one per rule) read Snakemake's inputs and parameters, call these modules and
write the outputs.
"""

__version__ = "0.1.0"

#: the stage sub-packages in the order data flow through them (shared modules sit above them all)
LAYERS = ("data", "crowd", "labels", "detection", "scoring", "clumps", "partnership", "report")
