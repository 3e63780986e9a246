# Humans and machine together: the export replayed in time order with retirement and a detector
# agent (docs/partnership.md); `snakemake --cores 2 partnership` makes it and its figure.


# seconds of matplotlib: on a cluster it runs where snakemake runs, not in the queue
localrules:
    plot_partnership,


rule partnership_replay:
    input:
        unpack(export_inputs),
        unpack(partnership_inputs),
        manifest=SURVEY_MANIFEST,
        images=SURVEY_PNG,
        code=package_code("partnership.py"),
    output:
        boxes=f"{RESULTS}/partnership/boxes.csv",
        subjects=f"{RESULTS}/partnership/subjects.csv",
        volunteers=f"{RESULTS}/partnership/volunteers.csv",
        curves=f"{RESULTS}/partnership/curves.csv",
        summary=PLAN.partnership_summary,
    log:
        f"{RESULTS}/logs/partnership.log",
    benchmark:
        f"{RESULTS}/benchmarks/partnership.tsv"
    conda:
        "../envs/partnership.yaml"
    threads: config["threads"]["partnership"]
    resources:
        gpu=config["resources"]["partnership"]["gpu"],
        mem_mb=scaled_memory(config["resources"]["partnership"]["mem_mb"]),
        runtime=config["resources"]["partnership"]["runtime"],
    params:
        partnership=config["partnership"],
        consensus=config["consensus"],
        evaluation=config["evaluation"],
        detector=config["detector"],
        backbone=lambda wildcards: backbone_spec(PLAN.partnership_backbone()),
        training=lambda wildcards: training_spec(PLAN.partnership_backbone(), 0),
        compute=COMPUTE_PARAMS,
        crop=config["labels"]["crop"],
    script:
        "../scripts/partnership.py"


rule plot_partnership:
    input:
        curves=rules.partnership_replay.output.curves,
        summary=rules.partnership_replay.output.summary,
        code=package_code("plot_partnership.py"),
    output:
        png=report(
            f"{RESULTS}/plots/partnership.png",
            caption="../report/partnership.rst",
            category="4. Volunteer consensus",
            labels={"figure": "humans and machine: effort curves"},
        ),
        pdf=f"{RESULTS}/plots/partnership.pdf",
    log:
        f"{RESULTS}/logs/plot_partnership.log",
    conda:
        "../envs/plot.yaml"
    script:
        "../scripts/plot_partnership.py"
