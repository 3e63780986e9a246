"""The conda environment files agree with pyproject.toml, and each rule's env holds every library its
code imports (so `--sdm conda` runs every rule)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

import yaml

from clumpfinder.config import third_party_imports
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
    # every runtime library the stages import is in some env (snakemake itself runs the envs, and
    # its --report needs pygments where snakemake runs)
    driver = {"snakemake", "snakemake-executor-plugin-slurm", "pyyaml", "jsonschema", "pygments"}
    assert set(deps) - seen <= driver, set(deps) - seen


def test_rules_declare_envs_logs():
    for smk in (REPO / "rules").glob("*.smk"):
        text = smk.read_text()
        for rule in re.split(r"\nrule ", text)[1:]:
            name = rule.split(":", 1)[0]
            assert "log:" in rule, f"{smk.name}: rule {name} has no log"
            assert "conda:" in rule, f"{smk.name}: rule {name} has no conda env"


# import name -> distribution name, where they differ
DISTRIBUTION = {"PIL": "pillow", "sklearn": "scikit-learn", "yaml": "pyyaml", "skimage": "scikit-image",
                "pynvml": "nvidia-ml-py"}
# snakemake injects the `snakemake` object; some libraries bring others along (pip dependencies)
PROVIDED = {"snakemake"}
BROUGHT_BY = {"timm": {"huggingface-hub", "safetensors"}, "astroquery": {"requests"}}


def env_packages(env: Path) -> set[str]:
    """Distribution names an env file installs (conda and pip), with what they bring along."""
    names = set()
    for d in yaml.safe_load(env.read_text())["dependencies"]:
        names.update(_name(x) for x in (d["pip"] if isinstance(d, dict) else [d]))
    return names | {b for n in names for b in BROUGHT_BY.get(n, ())}


def rule_script_envs() -> list[tuple[str, Path, Path]]:
    """(rule, script, env file) of every script rule in rules/*.smk."""
    found = []
    for smk in sorted((REPO / "rules").glob("*.smk")):
        for block in re.split(r"\n(?:local)?rule ", smk.read_text())[1:]:
            name = block.split(":", 1)[0]
            script = re.search(r'script:\s*\n\s*"([^"]+)"', block)
            env = re.search(r'conda:\s*\n\s*"([^"]+)"', block)
            if script:
                assert env, f"{smk.name}: rule {name} runs a script but has no conda env"
                found.append((name, (smk.parent / script.group(1)).resolve(), (smk.parent / env.group(1)).resolve()))
    return found


def missing_from_env(script: Path, env: Path, package_dir: Path = REPO / "src" / "clumpfinder") -> set[str]:
    """Libraries the script (and the package modules it runs) import that the env lacks."""
    needed = {DISTRIBUTION.get(n, n).lower().replace("_", "-") for n in third_party_imports(script, package_dir)}
    return needed - PROVIDED - env_packages(env)


RULES = rule_script_envs()


@pytest.mark.parametrize("rule, script, env", RULES, ids=[r for r, _, _ in RULES])
def test_each_rules_env_holds_what_its_code_imports(rule, script, env):
    assert not missing_from_env(script, env), f"rule {rule}: {env.name} lacks {sorted(missing_from_env(script, env))}"


def test_the_env_check_sees_a_missing_library(tmp_path):
    """An env without a library that a rule's code imports fails the check, naming it."""
    rule, script, env = next(r for r in RULES if r[0] == "train")
    spec = yaml.safe_load(env.read_text())
    spec["dependencies"] = [d for d in spec["dependencies"] if not (isinstance(d, str) and d.startswith("pandas"))]
    broken = tmp_path / "train.yaml"
    broken.write_text(yaml.safe_dump(spec))
    assert missing_from_env(script, env) == set()
    assert missing_from_env(script, broken) == {"pandas"}
    assert len(RULES) >= 20  # every script rule of the workflow was found


def test_modules_import_only_their_own_or_earlier_layers():
    """Data flow one way: a module imports the shared top-level modules, its own stage and earlier
    stages, never a later one (the order of clumpfinder.LAYERS)."""
    import clumpfinder
    from clumpfinder.config import _imports

    package = REPO / "src" / "clumpfinder"
    rank = {stage: i + 1 for i, stage in enumerate(clumpfinder.LAYERS)}  # 0: the shared modules
    assert {p.name for p in package.iterdir() if (p / "__init__.py").exists()} == set(rank)

    def layer(name: str) -> int:
        return rank.get(name.split(".")[0], 0)

    later = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).with_suffix("")
        own = layer(".".join(rel.parts))
        later += [(str(rel), name) for name in sorted(_imports(path)[0]) if layer(name) > own]
    assert not later, f"imports of a later stage: {later}"
    assert len(list(package.rglob("*.py"))) >= 30  # every module was walked


@pytest.mark.parametrize("script", sorted((REPO / "scripts").glob("*.py")), ids=lambda p: p.name)
def test_every_name_a_script_takes_from_the_package_exists(script):
    """What `from clumpfinder... import name` promises in each rule's script is there (a moved or
    renamed module fails here rather than in the middle of a run)."""
    import ast
    import importlib

    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "clumpfinder":
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name) or importlib.util.find_spec(f"{node.module}.{alias.name}"), (
                    f"{script.name}: {node.module} has no {alias.name}")
