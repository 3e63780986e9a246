# Figures of the evaluation (precision-recall, completeness by clump flux, galleries) and of
# the volunteer consensus.


# light plotting jobs: on a cluster they run where snakemake runs, not in the queue
localrules:
    plot_learning,
    plot_pr,
    plot_flux,
    gallery,
    plot_consensus,


rule plot_pr:
    input:
        splits=rules.split.output.splits,
        metrics=sweep_files("metrics.json"),
        code=package_code("plot_pr.py"),
    output:
        png=report(
            f"{RESULTS}/plots/pr_curves.png",
            caption="../report/pr_curves.rst",
            category="2. Detection quality",
            labels={"figure": "precision-recall curves"},
        ),
        pdf=f"{RESULTS}/plots/pr_curves.pdf",
    log:
        f"{RESULTS}/logs/plots/pr_curves.log",
    conda:
        "../envs/plot.yaml"
    params:
        backbones=BACKBONES,
        n_train=N_TRAIN,
        seeds=SEEDS,
        iou=config["evaluation"]["iou"],
    script:
        "../scripts/plot_pr.py"


rule plot_learning:
    input:
        splits=rules.split.output.splits,
        train=sweep_files("train_metrics.json"),
        code=package_code("plot_learning.py"),
    output:
        png=report(
            f"{RESULTS}/plots/learning_curves.png",
            caption="../report/learning_curves.rst",
            category="2. Detection quality",
            labels={"figure": "learning curves"},
        ),
        pdf=f"{RESULTS}/plots/learning_curves.pdf",
    log:
        f"{RESULTS}/logs/plots/learning_curves.log",
    conda:
        "../envs/plot.yaml"
    params:
        backbones=BACKBONES,
        n_train=N_TRAIN,
        seeds=SEEDS,
    script:
        "../scripts/plot_learning.py"


rule plot_flux:
    input:
        splits=rules.split.output.splits,
        metrics=sweep_files("metrics.json"),
        code=package_code("plot_flux.py"),
    output:
        png=report(
            f"{RESULTS}/plots/completeness_vs_flux.png",
            caption="../report/completeness_vs_flux.rst",
            category="2. Detection quality",
            labels={"figure": "completeness vs clump flux"},
        ),
        pdf=f"{RESULTS}/plots/completeness_vs_flux.pdf",
    log:
        f"{RESULTS}/logs/plots/completeness_vs_flux.log",
    conda:
        "../envs/plot.yaml"
    params:
        backbones=BACKBONES,
        n_train=N_TRAIN,
        seeds=SEEDS,
        min_flux_fraction=config["evaluation"]["truth_min_flux_fraction"],
        level=config["evaluation"]["bootstrap"]["level"],
    script:
        "../scripts/plot_flux.py"


rule gallery:
    input:
        unpack(truth_inputs),
        predictions=gallery_files("predictions.json"),
        metrics=gallery_files("metrics.json"),
        test=rules.split.output.test,
        images=SURVEY_PNG,
        code=package_code("gallery.py"),
    output:
        png=report(
            f"{RESULTS}/plots/gallery/n{{n_train}}.png",
            caption="../report/gallery.rst",
            category="3. Gallery",
            labels=gallery_labels,
        ),
        pdf=f"{RESULTS}/plots/gallery/n{{n_train}}.pdf",
    log:
        f"{RESULTS}/logs/plots/gallery_n{{n_train}}.log",
    conda:
        "../envs/plot.yaml"
    params:
        backbones=BACKBONES,
        model_seed=SEEDS[0],
        n_galaxies=config["report"]["gallery"]["n_galaxies"],
        seed=config["report"]["gallery"]["seed"],
    script:
        "../scripts/gallery.py"


rule plot_consensus:
    input:
        unpack(true_volunteer_inputs),
        volunteers=rules.consensus.output.volunteers,
        subjects=rules.consensus.output.subjects,
        code=package_code("plot_consensus.py"),
    output:
        png=report(
            f"{RESULTS}/plots/consensus.png",
            caption="../report/consensus.rst",
            category="4. Volunteer consensus",
            labels={"figure": "volunteer skills and SWAP posteriors"},
        ),
        pdf=f"{RESULTS}/plots/consensus.pdf",
    log:
        f"{RESULTS}/logs/plots/consensus.log",
    conda:
        "../envs/plot.yaml"
    script:
        "../scripts/plot_consensus.py"
