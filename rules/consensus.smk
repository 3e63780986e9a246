# Volunteer consensus: Zooniverse export -> one box per clump.


rule consensus:
    input:
        unpack(export_inputs),
        code=package_code("consensus.py"),
    output:
        boxes=f"{RESULTS}/consensus/boxes.csv",
        subjects=f"{RESULTS}/consensus/subjects.csv",
        volunteers=f"{RESULTS}/consensus/volunteers.csv",
        report=f"{RESULTS}/consensus/report.json",
    log:
        f"{RESULTS}/logs/consensus.log",
    benchmark:
        f"{RESULTS}/benchmarks/consensus.tsv"
    conda:
        "../envs/consensus.yaml"
    threads: config["threads"]["consensus"]
    resources:
        mem_mb=scaled_memory(4000),
        runtime=30,
    params:
        spec=config["consensus"],
    script:
        "../scripts/consensus.py"
