# One Faster R-CNN per (backbone, training-set size).


rule train:
    input:
        labels=f"{RESULTS}/labels/train_n{{n_train}}.json",
        images=rules.simulate_survey.output.png,
    output:
        model=f"{RESULTS}/models/{{backbone}}/n{{n_train}}/model.pt",
        metrics=f"{RESULTS}/models/{{backbone}}/n{{n_train}}/train_metrics.json",
    log:
        f"{RESULTS}/logs/train/{{backbone}}_n{{n_train}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{backbone}}_n{{n_train}}.tsv"
    conda:
        "../envs/train.yaml"
    threads: config["threads"]["train"]
    resources:
        mem_mb=6000,
        runtime=120,
    params:
        backbone=lambda wildcards: backbone_spec(wildcards.backbone),
        detector=config["detector"],
        training=lambda wildcards: training_spec(wildcards.backbone),
        checkpoint=f"{RESULTS}/checkpoints/{{backbone}}/n{{n_train}}/last.pt",
    script:
        "../scripts/train.py"
