"""Offline validation of the deployment files: images/compose.yaml, images/k8s/**, the Dockerfile.

No Docker engine and no Kubernetes cluster run here, so every check is static, and each reads
the files with the real tool wherever one exists:

- ``tools``: the real tools as subprocesses: ``kubectl kustomize`` renders the overlays, Docker
  Compose v2's ``config`` loads the compose file (interpolation, schema, consistency).
- ``compose``: Docker Compose's model of images/compose.yaml, then the project's rules on it.
- ``rendering``: a kustomize rendering read as Kubernetes and KubeRay define it (resource ids,
  pod templates with their Ray roles, lookups by name).
- ``kube``: core kinds with kubernetes-validate (strict); RayCluster and RayJob against the
  schemas of KubeRay's own CRDs (images/k8s/crds).
- ``policy``: what only this project knows about the rendered manifests: roles and
  ``RAY_ADDRESS`` through ``swe_fleet.addresses``, no secret in a manifest, references that
  resolve, version pins, patches that take effect.
- ``dockerfile``: the image's contract, on Docker's own Dockerfile parser.

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
