# Summary table, the backbone comparison and the headline figure over the whole sweep.


# seconds of pandas and matplotlib: on a cluster it runs where snakemake runs, not in the queue
localrules:
    summary,


rule summary:
    input:
        unpack(reference_inputs),
        unpack(partnership_report_inputs),
        splits=rules.split.output.splits,
        metrics=sweep_files("metrics.json"),
        train=sweep_files("train_metrics.json"),
        code=package_code("summary.py"),
    output:
        table=f"{RESULTS}/summary.csv",
        comparison=f"{RESULTS}/comparison.csv",
        table_html=report(
            f"{RESULTS}/tables/summary.html",
            caption="../report/summary_csv.rst",
            category="5. Tables",
            labels={"table": "every run (summary.csv)"},
        ),
        comparison_html=report(
            f"{RESULTS}/tables/comparison.html",
            caption="../report/comparison_csv.rst",
            category="5. Tables",
            labels={"table": "backbone comparison (comparison.csv)"},
        ),
        markdown=f"{RESULTS}/summary.md",
        html=report(
            f"{RESULTS}/summary.html",
            caption="../report/summary_html.rst",
            category="1. Headline",
            labels={"item": "comparison table"},
        ),
        png=report(
            f"{RESULTS}/plots/completeness_purity.png",
            caption="../report/completeness_purity.rst",
            category="1. Headline",
            labels={"item": "completeness and purity vs size"},
        ),
        pdf=f"{RESULTS}/plots/completeness_purity.pdf",
    log:
        f"{RESULTS}/logs/summary.log",
    conda:
        "../envs/plot.yaml"
    params:
        backbones=BACKBONES,
        n_train=N_TRAIN,
        seeds=SEEDS,
        baseline=BASELINE,
        evaluation=config["evaluation"],
        data={
            "source": SOURCE,
            "seed_role": config["report"]["seed_role"],
            "simulate_seed": config["simulate"]["seed"],
            "volunteers_seed": config["volunteers"]["seed"],
        },
    script:
        "../scripts/summary.py"
