# Splits, nested training subsets and COCO labels (consensus and, in simulation, truth).


# seconds of bookkeeping: on a cluster they run where snakemake runs, not in the queue
localrules:
    split,
    subset,
    truth_labels,


rule split:
    input:
        unpack(split_inputs),
        manifest=SURVEY_MANIFEST,
        boxes=LABEL_TABLES["boxes"],
        subjects=LABEL_TABLES["subjects"],
        code=package_code("split.py"),
    output:
        train=f"{RESULTS}/labels/train.json",
        val=f"{RESULTS}/labels/val.json",
        test=f"{RESULTS}/labels/test.json",
        splits=f"{RESULTS}/labels/splits.csv",
        report=f"{RESULTS}/labels/split_report.json",
    log:
        f"{RESULTS}/logs/split.log",
    conda:
        "../envs/consensus.yaml"
    params:
        fractions=config["labels"]["split_fractions"],
        seed=config["labels"]["seed"],
        crop=config["labels"]["crop"],
        group_by=config["labels"]["group_by"],
        simulated=SIMULATED,
    script:
        "../scripts/split.py"


rule subset:
    input:
        train=rules.split.output.train,
        splits=rules.split.output.splits,
        code=package_code("subset.py"),
    output:
        f"{RESULTS}/labels/train_n{{n_train}}.json",
    log:
        f"{RESULTS}/logs/subset_n{{n_train}}.log",
    conda:
        "../envs/consensus.yaml"
    script:
        "../scripts/subset.py"


# Each split's images decoded once (memory-mapped by every training and evaluation job).
rule image_cache:
    input:
        labels=f"{RESULTS}/labels/{{split}}.json",
        images=SURVEY_PNG,
        code=package_code("image_cache.py"),
    output:
        data=f"{RESULTS}/cache/{{split}}.npy",
        index=f"{RESULTS}/cache/{{split}}.json",
    log:
        f"{RESULTS}/logs/image_cache_{{split}}.log",
    wildcard_constraints:
        split="train|val|test",
    conda:
        "../envs/train.yaml"
    script:
        "../scripts/image_cache.py"


rule truth_labels:
    input:
        manifest=SURVEY_MANIFEST,
        truth=SURVEY_TRUTH,
        splits=rules.split.output.splits,
        code=package_code("truth_labels.py"),
    output:
        f"{RESULTS}/labels/test_truth.json",
    log:
        f"{RESULTS}/logs/truth_labels.log",
    conda:
        "../envs/consensus.yaml"
    params:
        box_scale=config["consensus"]["box_scale"],
        min_flux_fraction=config["evaluation"]["truth_min_flux_fraction"],
        ignore_min_flux_fraction=config["evaluation"]["truth_ignore_min_flux_fraction"],
        crop=config["labels"]["crop"],
    script:
        "../scripts/truth_labels.py"
