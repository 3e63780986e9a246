# Predictions on the validation and test splits and COCO-style metrics.


rule evaluate:
    input:
        unpack(truth_inputs),
        model=rules.train.output.model,
        test=rules.split.output.test,
        val=rules.split.output.val,
        images=SURVEY_PNG,
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
    script:
        "../scripts/evaluate.py"
