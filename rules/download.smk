# Real data: a subject list (clump catalogue or Zooniverse export), cutouts from a hips2fits
# service, and, for the catalogue route, labels from the catalogued clumps.


localrules:
    subject_list,
    download,
    pretraining_subject_list,
    download_pretraining,


rule subject_list:
    input:
        subject_list_input(),
        code=package_code("subject_list.py"),
    output:
        subjects=f"{RESULTS}/survey/subjects.csv",
        clumps=f"{RESULTS}/survey/catalogue_clumps.csv",
        report=f"{RESULTS}/survey/subjects_report.json",
    log:
        f"{RESULTS}/logs/subject_list.log",
    conda:
        "../envs/download.yaml"
    params:
        source=SOURCE,
        labels=config["data"]["catalogue"]["labels"],
    script:
        "../scripts/subject_list.py"


rule download:
    input:
        **local_cutouts(),
        subjects=rules.subject_list.output.subjects,
        code=package_code("download.py"),
    output:
        manifest=SURVEY_MANIFEST,
        png=directory(SURVEY_PNG),
        failures=f"{RESULTS}/survey/download_failures.csv",
        report=f"{RESULTS}/survey/download_report.json",
    log:
        f"{RESULTS}/logs/download.log",
    benchmark:
        f"{RESULTS}/benchmarks/download.tsv"
    conda:
        "../envs/download.yaml"
    threads: 2
    resources:
        mem_mb=scaled_memory(2000),
        runtime=600,
    params:
        spec=config["data"]["download"],
    script:
        "../scripts/download.py"


rule catalogue_labels:
    input:
        clumps=rules.subject_list.output.clumps,
        manifest=SURVEY_MANIFEST,
        code=package_code("catalogue_labels.py"),
    output:
        boxes=f"{RESULTS}/catalogue/boxes.csv",
        subjects=f"{RESULTS}/catalogue/subjects.csv",
        report=f"{RESULTS}/catalogue/report.json",
    log:
        f"{RESULTS}/logs/catalogue_labels.log",
    conda:
        "../envs/download.yaml"
    params:
        box_scale=config["consensus"]["box_scale"],
        min_flux_ratio=config["data"]["catalogue"]["min_flux_ratio"],
    script:
        "../scripts/catalogue_labels.py"


# real Galaxy Zoo votes: their galaxies (ra, dec in the vote catalogue) are fetched like the
# survey's, as a population of their own
rule pretraining_subject_list:
    input:
        config["pretrain"]["catalogue"] or [],
        code=package_code("subject_list.py"),
    output:
        subjects=f"{RESULTS}/pretraining/subjects.csv",
        clumps=f"{RESULTS}/pretraining/catalogue_clumps.csv",
        report=f"{RESULTS}/pretraining/subjects_report.json",
    log:
        f"{RESULTS}/logs/pretraining_subject_list.log",
    conda:
        "../envs/download.yaml"
    params:
        source="votes",
        labels={},
    script:
        "../scripts/subject_list.py"


rule download_pretraining:
    input:
        subjects=rules.pretraining_subject_list.output.subjects,
        code=package_code("download.py"),
    output:
        manifest=PRETRAINING["manifest"],
        png=directory(PRETRAINING["png"]),
        failures=f"{RESULTS}/pretraining/download_failures.csv",
        report=f"{RESULTS}/pretraining/download_report.json",
    log:
        f"{RESULTS}/logs/download_pretraining.log",
    conda:
        "../envs/download.yaml"
    threads: 2
    resources:
        mem_mb=scaled_memory(2000),
        runtime=600,
    params:
        # the user's cutout folder holds the survey's galaxies, not these
        spec={**config["data"]["download"], "folder": None},
    script:
        "../scripts/download.py"
