"""The configuration schema: complete descriptions, defaults valid, errors name the key."""

from __future__ import annotations

import jsonschema
import pytest
import yaml

from conftest import REPO, deep_update


@pytest.fixture(scope="module")
def schema():
    return yaml.safe_load((REPO / "config" / "schema.yaml").read_text())


def _walk(node, path="$"):
    """Yield (path, property schema) for every named property in the schema."""
    if isinstance(node, dict):
        for name, sub in node.get("properties", {}).items():
            yield f"{path}.{name}", sub
            yield from _walk(sub, f"{path}.{name}")
        for key in ("$defs", "additionalProperties", "items"):
            sub = node.get(key)
            if isinstance(sub, dict):
                if key == "$defs":
                    for name, d in sub.items():
                        yield from _walk(d, f"{path}.$defs.{name}")
                else:
                    yield from _walk(sub, f"{path}.{key}")
        for sub in node.get("allOf", []):
            yield from _walk(sub, path)


def test_every_key_has_a_description(schema):
    missing = [p for p, sub in _walk(schema) if not (isinstance(sub, dict) and sub.get("description"))]
    assert not missing, f"schema keys without a description: {missing}"


def test_every_config_key_is_in_the_schema(default_config, schema):
    jsonschema.validate(default_config, schema)  # additionalProperties: false everywhere


def test_test_config_is_valid(tiny_config, schema):
    jsonschema.validate(tiny_config, schema)


@pytest.mark.parametrize(
    "override, key",
    [
        ({"simulate": {"n_galaxies": "many"}}, "n_galaxies"),
        ({"consensus": {"box_scale": -1}}, "box_scale"),
        ({"simulate": {"typo_key": 1}}, "typo_key"),
        ({"backbones": {"r18": {"arch": "vgg16", "init": "scratch"}}}, "arch"),
        ({"training": {"lr": 0}}, "lr"),
        # a seed twice would count one training run as two in every interval
        ({"sweep": {"seeds": [0, 1, 0]}}, "['sweep']['properties']['seeds']"),
        ({"detector": {"max_stride": 64}}, "max_stride"),
    ],
)
def test_bad_values_are_named(default_config, schema, override, key):
    bad = deep_update(default_config, override)
    with pytest.raises(jsonschema.ValidationError) as err:
        jsonschema.validate(bad, schema)
    assert key in str(err.value)


def test_paper_config_is_valid(default_config, schema):
    paper = deep_update(default_config, yaml.safe_load((REPO / "config" / "paper.yaml").read_text()))
    jsonschema.validate(paper, schema)
    arms = {name: paper["backbones"][name] for name in paper["sweep"]["backbones"]}
    assert len(arms) == 5 and all(b["arch"] == "resnet50" for b in arms.values())
    assert sorted(b["trainable_layers"] for b in arms.values()) == [0, 0, 3, 3, 3]
