"""The conda environment files agree with pyproject.toml."""

from __future__ import annotations

import re
import tomllib

import yaml

from conftest import REPO


def _name(req: str) -> str:
    return re.split(r"[<>=!~ ;\[]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _spec(req: str) -> str:
    return req.strip().replace(" ", "").lower()


def test_env_files_match_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = {_name(d): _spec(d) for d in project["dependencies"]}
    seen = set()
    for env in sorted((REPO / "envs").glob("*.yaml")):
        spec = yaml.safe_load(env.read_text())
        entries = []
        for d in spec["dependencies"]:
            entries.extend(d["pip"] if isinstance(d, dict) else [d])
        for d in entries:
            name = _name(d)
            if name in ("python", "pip"):
                continue
            assert name in deps, f"{env.name}: {name} is not a dependency in pyproject.toml"
            assert _spec(d) == deps[name], f"{env.name}: {d!r} differs from pyproject's {deps[name]!r}"
            seen.add(name)
    # every runtime library the stages import is in some env (snakemake itself runs the envs)
    assert set(deps) - seen <= {"snakemake", "snakemake-executor-plugin-slurm", "pyyaml", "jsonschema"}, set(deps) - seen


def test_rules_declare_envs_logs():
    for smk in (REPO / "rules").glob("*.smk"):
        text = smk.read_text()
        for rule in re.split(r"\nrule ", text)[1:]:
            name = rule.split(":", 1)[0]
            assert "log:" in rule, f"{smk.name}: rule {name} has no log"
            assert "conda:" in rule, f"{smk.name}: rule {name} has no conda env"
