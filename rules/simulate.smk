# Simulated Clump Scout survey (GalSim images), simulated volunteers (Zooniverse export), and
# the simulated pretraining population with its Galaxy-Zoo-style votes.


rule simulate_survey:
    input:
        code=package_code("simulate_survey.py"),
    output:
        manifest=SURVEY_MANIFEST,
        truth=SURVEY_TRUTH,
        png=directory(SURVEY_PNG),
        fits=directory(f"{RESULTS}/survey/fits"),
    log:
        f"{RESULTS}/logs/simulate_survey.log",
    benchmark:
        f"{RESULTS}/benchmarks/simulate_survey.tsv"
    conda:
        "../envs/simulate.yaml"
    threads: config["threads"]["simulate"]
    resources:
        mem_mb=scaled_memory(2000),
        runtime=30,
    params:
        spec=config["simulate"],
        first_subject_id=SURVEY_FIRST_SUBJECT_ID,
    script:
        "../scripts/simulate_survey.py"


rule simulate_volunteers:
    input:
        manifest=SURVEY_MANIFEST,
        truth=SURVEY_TRUTH,
        code=package_code("simulate_volunteers.py"),
    output:
        export=f"{RESULTS}/survey/classifications.csv",
        volunteers=f"{RESULTS}/survey/volunteers.csv",
        gold=f"{RESULTS}/survey/gold.csv",
    log:
        f"{RESULTS}/logs/simulate_volunteers.log",
    conda:
        "../envs/simulate.yaml"
    resources:
        mem_mb=scaled_memory(2000),
        runtime=10,
    params:
        spec=config["volunteers"],
    script:
        "../scripts/simulate_volunteers.py"


# the pretraining population: the survey's physics, a seed and subject ids of its own, no FITS
rule simulate_pretraining_population:
    input:
        code=package_code("simulate_survey.py"),
    output:
        manifest=PRETRAINING["manifest"],
        truth=f"{RESULTS}/pretraining/truth.csv",
        png=directory(PRETRAINING["png"]),
    log:
        f"{RESULTS}/logs/simulate_pretraining_population.log",
    benchmark:
        f"{RESULTS}/benchmarks/simulate_pretraining_population.tsv"
    conda:
        "../envs/simulate.yaml"
    threads: config["threads"]["simulate"]
    resources:
        mem_mb=scaled_memory(2000),
        runtime=30,
    params:
        spec=pretraining_population_spec(),
        first_subject_id=PRETRAINING_FIRST_SUBJECT_ID,
    script:
        "../scripts/simulate_survey.py"


rule simulate_morphology:
    input:
        manifest=PRETRAINING["manifest"],
        objects=rules.simulate_pretraining_population.output.truth,
        code=package_code("simulate_morphology.py"),
    output:
        f"{RESULTS}/pretraining/morphology_votes.csv",
    log:
        f"{RESULTS}/logs/simulate_morphology.log",
    conda:
        "../envs/simulate.yaml"
    params:
        spec=config["morphology"],
        crowd=config["volunteers"],
    script:
        "../scripts/simulate_morphology.py"
