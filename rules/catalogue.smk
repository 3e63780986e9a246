# The clump catalogue from a trained detector (docs/catalogue.md): the chosen detector exported with
# its preprocessing, the catalogue of the configured galaxies (FITS + CSV tables, overlays), its
# validation against the simulated truth, and a summary figure in the report.


localrules:
    catalogue_model,
    plot_catalogue,
    catalogue_validation,


rule catalogue_model:
    input:
        unpack(catalogue_model_inputs),
        code=package_code("catalogue_model.py"),
    output:
        f"{CATALOGUE}/detector.pt",
    log:
        f"{RESULTS}/logs/catalogue_model.log",
    conda:
        "../envs/train.yaml"
    params:
        cells=catalogue_cells(),
        chosen=PLAN.catalogue_cell(),
        preprocessing={
            "crop": config["labels"]["crop"],
            "png": (
                config["simulate"]["png"]
                if SIMULATED
                else config["data"]["download"]["png"]
            ),
        },
        config={
            k: config[k]
            for k in ("data", "simulate", "volunteers", "consensus", "labels")
            + ("pretrain", "detector", "training", "backbones", "evaluation")
        },
    script:
        "../scripts/catalogue_model.py"


if CATALOGUE_SOURCE == "subjects":

    # the subject list's cutouts, fetched like the survey's (same settings, same cache)
    rule catalogue_download:
        input:
            subjects=config["catalogue"]["galaxies"]["path"],
            code=package_code("download.py"),
        output:
            manifest=f"{CATALOGUE}/cutouts/manifest.csv",
            png=directory(f"{CATALOGUE}/cutouts/png"),
            failures=f"{CATALOGUE}/cutouts/download_failures.csv",
            report=f"{CATALOGUE}/cutouts/download_report.json",
        log:
            f"{RESULTS}/logs/catalogue_download.log",
        conda:
            "../envs/download.yaml"
        threads: 2
        resources:
            mem_mb=scaled_memory(2000),
            runtime=600,
        params:
            # fetched: a folder of cutouts is catalogued with source 'fits' instead
            spec={**config["data"]["download"], "folder": None},
        script:
            "../scripts/download.py"


rule clump_catalogue:
    input:
        unpack(catalogue_inputs),
        code=package_code("catalogue.py"),
    output:
        fits=f"{CATALOGUE}/catalogue.fits",
        clumps=f"{CATALOGUE}/catalogue.csv",
        galaxies=f"{CATALOGUE}/catalogue_galaxies.csv",
        failures=f"{CATALOGUE}/catalogue_failures.csv",
        overlays=directory(f"{CATALOGUE}/overlays"),
        report=f"{CATALOGUE}/report.json",
    log:
        f"{RESULTS}/logs/catalogue.log",
    benchmark:
        f"{RESULTS}/benchmarks/catalogue.tsv"
    conda:
        "../envs/catalogue.yaml"
    threads: config["threads"]["catalogue"]
    resources:
        gpu=config["resources"]["catalogue"]["gpu"],
        mem_mb=scaled_memory(config["resources"]["catalogue"]["mem_mb"]),
        runtime=config["resources"]["catalogue"]["runtime"],
    params:
        spec=config["catalogue"],
        compute=COMPUTE_PARAMS,
        fits_dir=(
            f"{RESULTS}/survey/fits"
            if SIMULATED and CATALOGUE_SOURCE == "survey"
            else None
        ),
        described=catalogue_described(),
    script:
        "../scripts/catalogue.py"


rule catalogue_validation:
    input:
        clumps=rules.clump_catalogue.output.clumps,
        galaxies=rules.clump_catalogue.output.galaxies,
        truth=SURVEY_TRUTH,
        code=package_code("catalogue_validation.py"),
    output:
        f"{CATALOGUE}/validation.json",
    log:
        f"{RESULTS}/logs/catalogue_validation.log",
    conda:
        "../envs/catalogue.yaml"
    params:
        match_fwhm=config["catalogue"]["match_fwhm"],
        split=config["catalogue"]["galaxies"]["split"],
    script:
        "../scripts/catalogue_validation.py"


rule plot_catalogue:
    input:
        **(
            {"validation": rules.catalogue_validation.output[0]}
            if CATALOGUE_VALIDATED
            else {}
        ),
        clumps=rules.clump_catalogue.output.clumps,
        galaxies=rules.clump_catalogue.output.galaxies,
        overlays=rules.clump_catalogue.output.overlays,
        code=package_code("plot_catalogue.py"),
    output:
        png=report(
            f"{RESULTS}/plots/catalogue.png",
            caption="../report/catalogue.rst",
            category="6. Clump catalogue",
            labels={"figure": "clump catalogue"},
        ),
        pdf=f"{RESULTS}/plots/catalogue.pdf",
    log:
        f"{RESULTS}/logs/plots/catalogue.log",
    conda:
        "../envs/plot.yaml"
    params:
        flags=config["catalogue"]["measure"]["flag_ratios"],
    script:
        "../scripts/plot_catalogue.py"
