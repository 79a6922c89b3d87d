"""Shared by the packaging tests: the Kubernetes JSON schemas kubeconform reads."""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import pytest

K8S_VERSION = "1.37.0"


@pytest.fixture(scope="session")
def schemas(tmp_path_factory) -> str:
    """kubernetes-validate's schemas in the layout kubeconform reads. Its files refer to
    their shared definitions by the absolute `/api/_definitions.json` under an
    https://kubernetes.io/ `$id`, which a local file cannot resolve: the copy drops `$id`
    and makes the reference relative. Nothing else changes."""
    source = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{K8S_VERSION}-local-strict"
    target = tmp_path_factory.mktemp("schemas") / f"v{K8S_VERSION}-local-strict"
    target.mkdir()
    for path in source.glob("*.json"):
        schema = json.loads(path.read_text())
        schema.pop("$id", None)
        text = json.dumps(schema).replace('"/api/_definitions.json#', '"_definitions.json#')
        (target / path.name).write_text(text)
    return str(target.parent) + "/{{.NormalizedKubernetesVersion}}-local{{.StrictSuffix}}/{{.ResourceKind}}{{.KindSuffix}}.json"
