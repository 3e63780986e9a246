# Simulated Clump Scout survey (GalSim images) and simulated volunteers (Zooniverse export).


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
