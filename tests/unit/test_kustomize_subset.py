"""The offline tools behind the manifest checks: JSON Patch, the kustomize subset, interpolation."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from support.manifests.interpolate import InterpolationError, interpolate, interpolate_text
from support.manifests.jsonpatch import PatchError, apply_patch, parse_pointer
from support.manifests.kustomize import KustomizeError, render

# ---- JSON Patch -------------------------------------------------------------------------------


def test_pointer_tokens_unescape_slash_and_tilde():
    """~1 is '/' and ~0 is '~' in a JSON Pointer token (nvidia.com/gpu is nvidia.com~1gpu)."""
    assert parse_pointer("/limits/nvidia.com~1gpu/a~0b") == ["limits", "nvidia.com/gpu", "a~b"]


def test_patch_adds_replaces_removes_and_appends_without_touching_the_input():
    """add (also '-' to append), replace and remove apply in order to a copy."""
    doc = {"spec": {"groups": [{"name": "a"}], "limits": {"nvidia.com/gpu": "1", "cpu": "8"}}}
    out = apply_patch(
        doc,
        [
            {"op": "add", "path": "/spec/groups/-", "value": {"name": "b"}},
            {"op": "replace", "path": "/spec/groups/0/name", "value": "z"},
            {"op": "remove", "path": "/spec/limits/nvidia.com~1gpu"},
            {"op": "test", "path": "/spec/limits/cpu", "value": "8"},
        ],
    )
    assert out == {"spec": {"groups": [{"name": "z"}, {"name": "b"}], "limits": {"cpu": "8"}}}
    assert doc["spec"]["limits"]["nvidia.com/gpu"] == "1"


@pytest.mark.parametrize(
    ("op", "message"),
    [
        ({"op": "replace", "path": "/spec/missing", "value": 1}, "does not exist"),
        ({"op": "remove", "path": "/spec/list/3"}, "out of range"),
        ({"op": "add", "path": "/nope/deeper", "value": 1}, "'/nope' does not exist"),
        ({"op": "test", "path": "/spec/x", "value": 2}, "test failed"),
        ({"op": "move", "path": "/spec/x"}, "expected"),
        ({"op": "add", "path": "/spec/y"}, "no value"),
    ],
)
def test_patch_that_cannot_apply_is_an_error_naming_the_path(op, message):
    """A missing path, a bad index, a failed test or an unknown op is never a silent no-op."""
    with pytest.raises(PatchError, match=message):
        apply_patch({"spec": {"x": 1, "list": [0]}}, [op])


# ---- kustomize subset -------------------------------------------------------------------------


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


BASE = {
    "base/kustomization.yaml": "resources: [cm.yaml, deploy.yaml]\n",
    "base/cm.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg, namespace: ns}\ndata: {K: v}\n",
    "base/deploy.yaml": (
        "apiVersion: ray.io/v1\nkind: RayCluster\nmetadata: {name: rc, namespace: ns}\n"
        "spec:\n  headGroupSpec:\n    template:\n      spec:\n        containers:\n"
        "          - {name: h, image: 'swe-fleet:0.1.0-gpu'}\n"
        "        initContainers:\n          - {name: i, image: 'busybox:1'}\n"
    ),
}


def test_overlay_renders_base_then_patches_then_images(tmp_path):
    """resources recurse into folders; a JSON 6902 patch hits its target; images retag nested
    pod templates of custom resources (as kustomize does) and leave other images alone."""
    _write(
        tmp_path,
        {
            **BASE,
            "ov/kustomization.yaml": (
                "resources: [../base]\n"
                "patches:\n  - target: {kind: ConfigMap, name: cfg}\n"
                "    patch: '[{op: replace, path: /data/K, value: w}]'\n"
                "images:\n  - {name: swe-fleet, newName: reg.example/swe-fleet, newTag: 0.1.0}\n"
            ),
        },
    )
    docs = {d["kind"]: d for d in render(tmp_path / "ov")}
    assert docs["ConfigMap"]["data"] == {"K": "w"}
    spec = docs["RayCluster"]["spec"]["headGroupSpec"]["template"]["spec"]
    assert spec["containers"][0]["image"] == "reg.example/swe-fleet:0.1.0"
    assert spec["initContainers"][0]["image"] == "busybox:1"


def test_config_map_generator_writes_files_and_literals_per_namespace(tmp_path):
    """configMapGenerator without hash suffixes: the file's content under its name, literals."""
    _write(
        tmp_path,
        {
            "k/kustomization.yaml": (
                "configMapGenerator:\n"
                "  - {name: spec, namespace: a, files: [council.yaml], literals: [X=1]}\n"
                "  - {name: spec, namespace: b, files: [renamed.yaml=council.yaml]}\n"
                "generatorOptions: {disableNameSuffixHash: true}\n"
            ),
            "k/council.yaml": "name: c\n",
        },
    )
    docs = render(tmp_path / "k")
    assert [(d["metadata"]["namespace"], d["data"]) for d in docs] == [
        ("a", {"council.yaml": "name: c\n", "X": "1"}),
        ("b", {"renamed.yaml": "name: c\n"}),
    ]


@pytest.mark.parametrize(
    ("kustomization", "message"),
    [
        ("resources: [../base]\nnamePrefix: x-\n", "namePrefix, which the offline renderer"),
        ("resources: [../base, ../base/cm.yaml]\n", "outside"),
        ("resources: [../base, missing.yaml]\n", "does not exist"),
        (
            "resources: [../base]\npatches:\n  - target: {kind: ConfigMap, name: cgf}\n"
            "    patch: '[{op: replace, path: /data/K, value: w}]'\n",
            "matches no resource",
        ),
        (
            "resources: [../base]\npatches:\n  - target: {kind: ConfigMap, name: cfg}\n"
            "    patch: '[{op: replace, path: /data/Q, value: w}]'\n",
            "does not exist",
        ),
        ("resources: [../base]\npatches:\n  - patch: '{kind: ConfigMap}'\n", "needs a target"),
        (
            "resources: [../base]\npatches:\n  - target: {kind: ConfigMap}\n    patch: '{data: {K: w}}'\n",
            "strategic merge",
        ),
        ("configMapGenerator: [{name: x, literals: [A=1]}]\n", "disableNameSuffixHash"),
        ("resources: [../base, ../base]\n", "defined twice"),
    ],
)
def test_overlay_outside_the_subset_or_wrong_is_refused(tmp_path, kustomization, message):
    """Unsupported fields, files outside the folder, missing files, patches that hit nothing or do
    not apply, and duplicates are errors naming the cause."""
    _write(tmp_path, {**BASE, "ov/kustomization.yaml": kustomization})
    with pytest.raises(KustomizeError, match=message):
        render(tmp_path / "ov")


def test_resource_without_kind_or_name_is_refused(tmp_path):
    """A document that is not a Kubernetes resource is reported with its file."""
    _write(tmp_path, {"k/kustomization.yaml": "resources: [x.yaml]\n", "k/x.yaml": "data: {a: 1}\n"})
    with pytest.raises(KustomizeError, match=r"x\.yaml: document 0 is not a resource"):
        render(tmp_path / "k")


# ---- compose interpolation --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("${A:-d}", {}, "d"),
        ("${A:-d}", {"A": ""}, "d"),
        ("${A-d}", {"A": ""}, ""),
        ("${A-d}", {"A": "x"}, "x"),
        ("pre-$A-${B}", {"A": "1", "B": "2"}, "pre-1-2"),
        ("$$HOME", {}, "$HOME"),
        ("${A:+alt}", {"A": "x"}, "alt"),
        ("${A:+alt}", {}, ""),
    ],
)
def test_interpolation_follows_compose(text, env, expected):
    """Defaults for unset/empty, '-' only for unset, '$$' escapes, ':+' alternatives."""
    assert interpolate_text(text, env) == expected


def test_interpolation_reports_variables_without_default_and_required_ones():
    """Unset variables without default are collected; ':?' raises with its message."""
    missing: list[str] = []
    assert interpolate({"a": ["${X}", 1], "k${Y}": "v"}, {}, missing=missing) == {"a": ["", 1], "k${Y}": "v"}
    assert missing == ["X"]
    with pytest.raises(InterpolationError, match="required variable TOKEN is missing: set it"):
        interpolate_text("${TOKEN:?set it}", {})
    with pytest.raises(InterpolationError, match=r"use \$\$"):
        interpolate_text("cost: 5$", {})


def test_yaml_merge_keys_are_resolved_before_interpolation():
    """Anchors and << merges (used by the compose file) come out as plain mappings."""
    doc = yaml.safe_load("x: &a {image: '${I:-img}', init: true}\ns: {<<: *a, init: false}\n")
    assert interpolate(doc, {})["s"] == {"image": "img", "init": False}
