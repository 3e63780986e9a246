# Backbone initialisations: hub weights (fetch_weights), Galaxy-Zoo-style morphology votes of a
# pretraining population of its own (never a detection galaxy) and the galaxy-pretraining stages
# (pretrain:morphology, pretrain:clumpy).


localrules:
    fetch_weights,


rule fetch_weights:
    input:
        code=package_code("fetch_weights.py"),
    output:
        f"{RESULTS}/weights/{{backbone}}.json",
    log:
        f"{RESULTS}/logs/fetch_weights/{{backbone}}.log",
    conda:
        "../envs/train.yaml"
    params:
        backbone=lambda wildcards: backbone_spec(wildcards.backbone),
    script:
        "../scripts/fetch_weights.py"


rule pretrain_morphology:
    input:
        votes=votes_input,
        population=PRETRAINING["manifest"],
        images=PRETRAINING["png"],
        survey=SURVEY_MANIFEST,
        code=package_code("pretrain.py"),
    output:
        encoder=f"{RESULTS}/pretrain/morphology/{{morphology}}/encoder.pt",
        metrics=f"{RESULTS}/pretrain/morphology/{{morphology}}/metrics.json",
    log:
        f"{RESULTS}/logs/pretrain/morphology_{{morphology}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/pretrain/morphology_{{morphology}}.tsv"
    priority: 10  # on the critical path: the pretrained backbones wait for it
    conda:
        "../envs/train.yaml"
    threads: config["threads"]["pretrain"]
    resources:
        gpu=config["resources"]["pretrain"]["gpu"],
        mem_mb=scaled_memory(config["resources"]["pretrain"]["mem_mb"]),
        runtime=config["resources"]["pretrain"]["runtime"],
    params:
        backbone=lambda wildcards: PLAN.morphology_spec(wildcards.morphology),
        spec=config["pretrain"]["morphology"],
        questions=config["pretrain"]["questions"],
        compute=COMPUTE_PARAMS,
        checkpoint=f"{RESULTS}/checkpoints/pretrain/morphology/{{morphology}}/last.pt",
    script:
        "../scripts/pretrain.py"


rule pretrain_clumpy:
    input:
        unpack(clumpy_base_input),
        votes=rules.consensus.output.subjects,
        manifest=SURVEY_MANIFEST,
        splits=rules.split.output.splits,
        images=SURVEY_PNG,
        code=package_code("pretrain.py"),
    output:
        encoder=f"{RESULTS}/pretrain/clumpy/{{backbone}}/encoder.pt",
        metrics=f"{RESULTS}/pretrain/clumpy/{{backbone}}/metrics.json",
    log:
        f"{RESULTS}/logs/pretrain/clumpy_{{backbone}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/pretrain/clumpy_{{backbone}}.tsv"
    priority: 10  # on the critical path: the pretrained backbones wait for it
    conda:
        "../envs/train.yaml"
    threads: config["threads"]["pretrain"]
    resources:
        gpu=config["resources"]["pretrain"]["gpu"],
        mem_mb=scaled_memory(config["resources"]["pretrain"]["mem_mb"]),
        runtime=config["resources"]["pretrain"]["runtime"],
    params:
        backbone=lambda wildcards: clumpy_base_spec(wildcards.backbone),
        spec=config["pretrain"]["clumpy"],
        compute=COMPUTE_PARAMS,
        checkpoint=f"{RESULTS}/checkpoints/pretrain/clumpy/{{backbone}}/last.pt",
    script:
        "../scripts/pretrain.py"
