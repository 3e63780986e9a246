# Summary table and completeness/purity figure over the whole sweep.


rule summary:
    input:
        metrics=expand(
            f"{RESULTS}/eval/{{backbone}}/n{{n_train}}/seed{{seed}}/metrics.json",
            backbone=BACKBONES,
            n_train=N_TRAIN,
            seed=SEEDS,
        ),
        train=expand(
            f"{RESULTS}/models/{{backbone}}/n{{n_train}}/seed{{seed}}/train_metrics.json",
            backbone=BACKBONES,
            n_train=N_TRAIN,
            seed=SEEDS,
        ),
    output:
        table=f"{RESULTS}/summary.csv",
        png=f"{RESULTS}/plots/completeness_purity.png",
        pdf=f"{RESULTS}/plots/completeness_purity.pdf",
    log:
        f"{RESULTS}/logs/summary.log",
    conda:
        "../envs/plot.yaml"
    params:
        backbones=BACKBONES,
        n_train=N_TRAIN,
        seeds=SEEDS,
    script:
        "../scripts/summary.py"
