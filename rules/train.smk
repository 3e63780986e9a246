# One Faster R-CNN per (backbone, training-set size, seed); its checkpoint is chosen on the validation split.


rule train:
    input:
        unpack(init_input),
        labels=f"{RESULTS}/labels/train_n{{n_train}}.json",
        val=rules.split.output.val,
        cache=f"{RESULTS}/cache/train.npy",
        cache_index=f"{RESULTS}/cache/train.json",
        val_cache=f"{RESULTS}/cache/val.npy",
        val_cache_index=f"{RESULTS}/cache/val.json",
        code=package_code("train.py"),
    output:
        model=f"{RESULTS}/models/{{backbone}}/n{{n_train}}/seed{{seed}}/model.pt",
        metrics=f"{RESULTS}/models/{{backbone}}/n{{n_train}}/seed{{seed}}/train_metrics.json",
    log:
        f"{RESULTS}/logs/train/{{backbone}}_n{{n_train}}_seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{backbone}}_n{{n_train}}_seed{{seed}}.tsv"
    conda:
        "../envs/train.yaml"
    threads: config["threads"]["train"]
    resources:
        gpu=config["resources"]["train"]["gpu"],
        mem_mb=scaled_memory(config["resources"]["train"]["mem_mb"]),
        runtime=config["resources"]["train"]["runtime"],
    params:
        backbone=lambda wildcards: backbone_spec(wildcards.backbone),
        detector=config["detector"],
        training=lambda wildcards: training_spec(wildcards.backbone, wildcards.seed),
        compute=COMPUTE_PARAMS,
        selection={
            "iou": config["evaluation"]["iou"],
            "scores": config["evaluation"]["scores"],
        },
        checkpoint=f"{RESULTS}/checkpoints/{{backbone}}/n{{n_train}}/seed{{seed}}/last.pt",
    script:
        "../scripts/train.py"
