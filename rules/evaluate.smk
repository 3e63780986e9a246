# Predictions on the validation and test splits and COCO-style metrics.


rule evaluate:
    input:
        unpack(truth_inputs),
        model=rules.train.output.model,
        test=rules.split.output.test,
        val=rules.split.output.val,
        test_cache=f"{RESULTS}/cache/test.npy",
        test_cache_index=f"{RESULTS}/cache/test.json",
        val_cache=f"{RESULTS}/cache/val.npy",
        val_cache_index=f"{RESULTS}/cache/val.json",
        code=package_code("evaluate.py"),
    output:
        predictions=f"{RESULTS}/eval/{{backbone}}/n{{n_train}}/seed{{seed}}/predictions.json",
        metrics=f"{RESULTS}/eval/{{backbone}}/n{{n_train}}/seed{{seed}}/metrics.json",
    log:
        f"{RESULTS}/logs/evaluate/{{backbone}}_n{{n_train}}_seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate/{{backbone}}_n{{n_train}}_seed{{seed}}.tsv"
    conda:
        "../envs/train.yaml"
    threads: config["threads"]["evaluate"]
    resources:
        gpu=config["resources"]["evaluate"]["gpu"],
        mem_mb=scaled_memory(config["resources"]["evaluate"]["mem_mb"]),
        runtime=config["resources"]["evaluate"]["runtime"],
    params:
        spec=config["evaluation"],
        compute=COMPUTE_PARAMS,
    script:
        "../scripts/evaluate.py"


# seconds of scoring: no reason to queue it on a cluster
localrules:
    consensus_ceiling,


# The classical clump finder baseline (residual peaks), its settings chosen on the validation split.
rule classical:
    input:
        unpack(truth_inputs),
        val=rules.split.output.val,
        test=rules.split.output.test,
        subjects=LABEL_TABLES["subjects"],
        images=SURVEY_PNG,
        code=package_code("classical.py"),
    output:
        predictions=f"{RESULTS}/eval/classical/predictions.json",
        metrics=f"{RESULTS}/eval/classical/metrics.json",
    log:
        f"{RESULTS}/logs/classical.log",
    benchmark:
        f"{RESULTS}/benchmarks/classical.tsv"
    conda:
        "../envs/classical.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        spec=config["classical"],
        evaluation=config["evaluation"],
        box_scale=config["consensus"]["box_scale"],
    script:
        "../scripts/classical.py"


# The label ceiling: the consensus boxes of the test galaxies against the simulated truth.
rule consensus_ceiling:
    input:
        test=rules.split.output.test,
        truth=f"{RESULTS}/labels/test_truth.json",
        code=package_code("consensus_ceiling.py"),
    output:
        metrics=f"{RESULTS}/eval/consensus_ceiling/metrics.json",
    log:
        f"{RESULTS}/logs/consensus_ceiling.log",
    conda:
        "../envs/classical.yaml"
    params:
        evaluation=config["evaluation"],
    script:
        "../scripts/consensus_ceiling.py"
