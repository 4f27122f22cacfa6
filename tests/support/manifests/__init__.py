"""Offline validation of the deployment files: images/compose.yaml, images/k8s/**, the Dockerfile.

No Docker engine and no Kubernetes cluster run here, so every check is static:

- ``compose``: compose-style ``${VAR:-default}`` interpolation, then the compose-spec package
  (unknown keys, wrong types, undefined secrets), then project rules (health checks, roles).
- ``kustomize``: a renderer for the kustomize subset the overlays use (resources, JSON 6902
  patches, images, configMapGenerator without hash suffixes). Anything else is refused.
- ``kube``: core kinds with kubernetes-validate (strict); RayCluster and RayJob against the
  KubeRay field schemas in images/k8s/schemas (pod templates against Kubernetes' own schema).
- ``policy``: what only this project knows: roles and ``RAY_ADDRESS`` through
  ``swe_fleet.addresses``, no secret in a manifest, cross references, version pins.

Every check returns a list of :class:`Problem`; an empty list means the files pass.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One reason a deployment file is wrong: where (file, resource, field) and what to do."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def describe(problems: list[Problem]) -> str:
    """All problems, one per line (for assertion messages)."""
    return "\n".join(str(p) for p in problems) or "(none)"
