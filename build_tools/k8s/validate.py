"""Offline validation of Kubernetes manifests: no cluster, no network.

* Built-in kinds: the Kubernetes JSON schemas bundled in `kubernetes-validate`, strict (unknown
  fields are errors), for KUBERNETES_VERSION.
* Custom resources (KEDA ScaledObject, prometheus-operator ServiceMonitor and PrometheusRule): the
  `openAPIV3Schema` of their CustomResourceDefinitions, committed under k8s/schemas/ (SOURCES.md names
  the tags), made strict the same way and checked with `jsonschema`.
* A kind known to neither is an error (kubernetes-validate's own command line only warns).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from build_tools.errors import ToolkitError

logger = logging.getLogger(__name__)

# The Kubernetes release the manifests are written for and checked against (autoscaling/v2, policy/v1,
# networking.k8s.io/v1; autoscaling/v2beta2 is gone since 1.26).
KUBERNETES_VERSION = "1.30.0"
SCHEMA_DIR = Path(__file__).resolve().parents[2] / "k8s" / "schemas"


class ManifestError(ToolkitError):
    """A manifest does not validate against its kind's schema, or its kind is unknown."""


@dataclass(frozen=True)
class Finding:
    where: str  # file or label of the document
    kind: str
    name: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.kind}/{self.name}: {self.message}"


def _strict(schema: Any) -> Any:
    """An openAPIV3Schema as JSON Schema that refuses undeclared fields (kubectl --validate=strict)."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if schema.get("x-kubernetes-int-or-string") and "type" not in out and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    return out


@cache
def crd_schemas(schema_dir: Path = SCHEMA_DIR) -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> strict JSON schema, for every CRD YAML in the folder."""
    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(schema_dir.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group = crd["spec"]["group"]
            kind = crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                schema = _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
                schemas[(f"{group}/{version['name']}", kind)] = schema
    if not schemas:
        raise ManifestError(f"no CustomResourceDefinition found in {schema_dir}")
    return schemas


def _path(error: Any) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<document>"


def validate_document(doc: dict[str, Any], where: str = "<manifest>",
                      version: str = KUBERNETES_VERSION) -> list[Finding]:
    """Every problem of one manifest (empty when it validates)."""
    import jsonschema
    import kubernetes_validate

    kind = str(doc.get("kind", "<no kind>"))
    name = str((doc.get("metadata") or {}).get("name", "<no name>"))
    api_version = str(doc.get("apiVersion", ""))
    crd = crd_schemas().get((api_version, kind))
    if crd is not None:
        validator = jsonschema.Draft7Validator(crd)
        return [Finding(where, kind, name, f"{_path(e)}: {e.message}")
                for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))]
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [Finding(where, kind, name, f"{_path(e)}: {e.message} (Kubernetes {e.version})")]
    except kubernetes_validate.SchemaNotFoundError as e:
        return [Finding(where, kind, name, f"unknown kind: {e.message}; custom resources need their CRD in "
                        f"{SCHEMA_DIR.name}/")]
    return []


def validate_documents(docs: Iterable[tuple[str, dict[str, Any]]],
                       version: str = KUBERNETES_VERSION) -> list[Finding]:
    findings: list[Finding] = []
    for where, doc in docs:
        findings += validate_document(doc, where, version)
    return findings


def load_manifests(paths: Iterable[Path]) -> list[tuple[str, dict[str, Any]]]:
    """Every non-empty YAML document of the files (folders: their *.yaml, recursively)."""
    docs: list[tuple[str, dict[str, Any]]] = []
    for path in paths:
        files = sorted(path.rglob("*.yaml")) if path.is_dir() else [path]
        for f in files:
            for doc in yaml.safe_load_all(f.read_text()):
                if doc:
                    docs.append((str(f), doc))
    return docs
