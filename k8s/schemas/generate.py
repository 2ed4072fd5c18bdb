"""Regenerate the vendored JSON schemas under k8s/schemas/ (provenance: k8s/schemas/README.md).

Every output is a standalone, strict JSON schema (draft 2020-12): no reference leaves the file (the definitions a
kind needs are copied into its ``$defs``), and every object that lists its properties rejects unknown ones
(``additionalProperties: false``), like the ``*-standalone-strict`` schemas of yannh/kubernetes-json-schema that
kubeconform uses. Inputs, all from PyPI except the KubeRay CRD extract::

    pip download --no-deps -d build/wheels kubernetes-validate==1.37.0 kubeflow-training==1.9.4
    (cd build/wheels && for w in *.whl; do unzip -oq "$w"; done)
    python k8s/schemas/generate.py --wheels build/wheels

* kubernetes-validate 1.37.0: ``kubernetes-json-schema/v1.33.0-local-strict/`` (openapi2jsonschema output of the
  Kubernetes 1.33.0 OpenAPI; each kind file refers into ``_definitions.json``) for the built-in kinds, and for the
  corev1 types the custom resources embed.
* kubeflow-training 1.9.4 (the Training Operator SDK): ``kubeflow/training/models/kubeflow_org_v1_*.py``, the
  OpenAPI-generator models of the operator's swagger (field names, types, required fields, descriptions), read with
  ``ast`` (nothing is imported) for PyTorchJob.
* ``sources/kuberay-v1-crd.json`` for RayCluster, RayJob and RayService: the spec schemas of KubeRay's CRDs, with
  the corev1 types they inline replaced by references to the Kubernetes 1.33.0 definitions (see that file).
"""

from __future__ import annotations

import argparse
import ast
import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
K8S_VERSION = "v1.33.0"
K8S_DIR = f"kubernetes_validate/kubernetes-json-schema/{K8S_VERSION}-local-strict"
KUBEFLOW_MODELS = "kubeflow/training/models"
DRAFT = "https://json-schema.org/draft/2020-12/schema"

# built-in kinds the manifests use: file name in kubernetes-validate (= yannh naming)
BUILTIN_KINDS = [
    "namespace-v1",
    "serviceaccount-v1",
    "secret-v1",
    "persistentvolumeclaim-v1",
    "service-v1",
    "deployment-apps-v1",
]

# OpenAPI-generator class names of kubernetes-client models -> Kubernetes OpenAPI definitions
KUBERNETES_CLIENT_TYPES = {
    "V1ObjectMeta": "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
    "V1ListMeta": "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta",
    "V1LabelSelector": "io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector",
    "V1PodTemplateSpec": "io.k8s.api.core.v1.PodTemplateSpec",
    "K8sIoApiAutoscalingV2MetricSpec": "io.k8s.api.autoscaling.v2.MetricSpec",
    "Quantity": "io.k8s.apimachinery.pkg.api.resource.Quantity",
}


def _refs(node: Any) -> list[str]:
    """Names of the ``#/$defs/NAME`` references anywhere in ``node``."""
    if isinstance(node, dict):
        found = [node["$ref"].rsplit("/", 1)[-1]] if isinstance(node.get("$ref"), str) else []
        return found + [r for k, v in node.items() if k != "$ref" for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _closure(roots: list[str], defs: dict[str, Any]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    stack = list(roots)
    while stack:
        name = stack.pop()
        if name not in seen:
            seen[name] = defs[name]
            stack.extend(_refs(defs[name]))
    return dict(sorted(seen.items()))


def _local_refs(node: Any) -> Any:
    """kubernetes-validate's ``/api/_definitions.json#/$defs/X`` -> ``#/$defs/X`` (same document)."""
    if isinstance(node, dict):
        return {
            k: ("#/$defs/" + v.rsplit("/", 1)[-1] if k == "$ref" and isinstance(v, str) else _local_refs(v))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_local_refs(v) for v in node]
    return node


def _strict(node: Any) -> Any:
    """Objects that list properties reject unknown ones (what the strict kubernetes schemas already do)."""
    if isinstance(node, dict):
        out = {k: _strict(v) for k, v in node.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


def standalone(root: dict[str, Any], defs: dict[str, Any], title: str) -> dict[str, Any]:
    root = {k: v for k, v in _local_refs(root).items() if k not in ("$id", "$schema")}
    return {"$schema": DRAFT, "title": title, **root, "$defs": _closure(_refs(root), defs)}


def k8s_definitions(wheels: Path) -> dict[str, Any]:
    data = json.loads((wheels / K8S_DIR / "_definitions.json").read_text())
    defs: dict[str, Any] = _local_refs(data["$defs"])
    return defs


def builtin_schema(wheels: Path, name: str, defs: dict[str, Any]) -> dict[str, Any]:
    root = json.loads((wheels / K8S_DIR / f"{name}.json").read_text())
    return standalone(root, defs, f"{name} (Kubernetes {K8S_VERSION}, strict)")


def _type_meta(group_version: str, kind: str, defs_prefix: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "type": "object",
        "properties": {
            "apiVersion": {"type": "string", "enum": [group_version]},
            "kind": {"type": "string", "enum": [kind]},
            "metadata": {"$ref": "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"},
            "spec": {"$ref": f"#/$defs/{defs_prefix}.{kind}Spec"},
            "status": {"type": "object", "description": "Set by the operator; never in a manifest."},
        },
        "required": ["apiVersion", "kind", "spec"],
        "additionalProperties": False,
    }


# ---------------------------------------------------------------- KubeRay (extract of the CRDs)

KUBERAY_SOURCE = "sources/kuberay-v1-crd.json"
CEL_IN_LIST = re.compile(r"self in \[((?:'[^']*'(?:, )?)+)\]")


def _cel(node: dict[str, Any]) -> dict[str, Any]:
    """The CEL rules a JSON schema can state exactly: ``self in ['a', 'b']`` becomes ``enum``; a transition rule
    (``self == oldSelf``: immutable) compares with the stored object, which a manifest alone cannot show. The rules
    stay in the output (``x-kubernetes-validations``), as documentation."""
    out = dict(node)
    for rule in (v["rule"] for v in node["x-kubernetes-validations"]):
        if m := CEL_IN_LIST.fullmatch(rule):
            out["enum"] = re.findall(r"'([^']*)'", m.group(1))
        elif rule != "self == oldSelf":
            raise ValueError(f"{KUBERAY_SOURCE}: no JSON schema rendering for the CEL rule {rule!r}")
    return out


def kuberay_schemas(k8s_defs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    source = json.loads((HERE / KUBERAY_SOURCE).read_text())
    group, version = source["group"], source["version"]
    prefix = f"io.ray.{version}"

    def convert(node: Any) -> Any:
        if isinstance(node, list):
            return [convert(v) for v in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str):
            kind, _, name = ref.partition(":")
            target = {"k8s": name, "spec": f"{prefix}.{name}Spec"}[kind]
            if kind == "k8s" and target not in k8s_defs:
                raise KeyError(f"{KUBERAY_SOURCE}: no Kubernetes definition {target}")
            return {"$ref": f"#/$defs/{target}"}
        out = {k: convert(v) for k, v in node.items()}
        if "x-kubernetes-validations" in out:
            out = _cel(out)
        if "required" in out:  # the API server applies defaults before it validates
            defaulted = {k for k, v in out["properties"].items() if "default" in v}
            out["required"] = [r for r in out["required"] if r not in defaulted]
            if not out["required"]:
                del out["required"]
        return out

    own = {f"{prefix}.{kind}Spec": _strict(convert(spec)) for kind, spec in source["spec"].items()}
    defs = {**k8s_defs, **own}
    files = source["source"]["files"]
    out = {}
    for kind in source["spec"]:
        description = (
            f"{kind} ({group}/{version}): spec from the KubeRay {source['source']['kuberay']} CRD, "
            f"{source['source']['repository']}@{source['source']['commit'][:12]}:{files[kind]} (k8s/schemas/README.md)"
        )
        root = _type_meta(f"{group}/{version}", kind, prefix, description)
        out[f"{group}/{kind.lower()}_{version}.json"] = standalone(root, defs, f"{kind} ({group}/{version}, strict)")
    return out


# ---------------------------------------------------------------- Kubeflow Training Operator (SDK models)


def _model_classes(models: Path) -> dict[str, dict[str, Any]]:
    """OpenAPI-generator model modules -> {class name: {types, names, required, descriptions}}."""
    classes: dict[str, dict[str, Any]] = {}
    for path in sorted(models.glob("kubeflow_org_v1_*.py")):
        tree = ast.parse(path.read_text())
        for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
            info: dict[str, Any] = {"required": set(), "descriptions": {}}
            for node in cls.body:
                if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
                    if node.targets[0].id in ("openapi_types", "attribute_map"):
                        info[node.targets[0].id] = ast.literal_eval(node.value)
                elif isinstance(node, ast.FunctionDef):
                    doc = ast.get_docstring(node) or ""
                    setter = any(isinstance(d, ast.Attribute) and d.attr == "setter" for d in node.decorator_list)
                    if setter and f"Invalid value for `{node.name}`, must not be `None`" in ast.unparse(node):
                        info["required"].add(node.name)
                    elif not setter and doc.startswith("Gets the "):
                        lines = [ln for ln in doc.splitlines()[1:] if ln.strip() and not ln.startswith(":")]
                        text = " ".join(ln.replace("# noqa: E501", "").strip() for ln in lines)
                        if text:
                            info["descriptions"][node.name] = text
            if "openapi_types" in info:
                classes[cls.name] = info
    return classes


def _openapi_type(spec: str, prefix: str) -> dict[str, Any]:
    if m := re.fullmatch(r"list\[(.+)\]", spec):
        return {"type": "array", "items": _openapi_type(m.group(1), prefix)}
    if m := re.fullmatch(r"dict\(str, (.+)\)", spec):
        return {"type": "object", "additionalProperties": _openapi_type(m.group(1), prefix)}
    simple = {
        "str": {"type": "string"},
        "int": {"type": "integer"},
        "bool": {"type": "boolean"},
        "float": {"type": "number"},
        "datetime": {"type": "string", "format": "date-time"},
        "object": {},
    }
    if spec in simple:
        return dict(simple[spec])
    if spec in KUBERNETES_CLIENT_TYPES:
        return {"$ref": f"#/$defs/{KUBERNETES_CLIENT_TYPES[spec]}"}
    if spec.startswith("KubeflowOrgV1"):
        return {"$ref": f"#/$defs/{prefix}.{spec.removeprefix('KubeflowOrgV1')}"}
    raise KeyError(f"no JSON schema mapping for the SDK type {spec!r}")


def kubeflow_schemas(wheels: Path, k8s_defs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    prefix = "org.kubeflow.v1"
    own = {}
    for cls, info in _model_classes(wheels / KUBEFLOW_MODELS).items():
        names: dict[str, str] = info["attribute_map"]
        props = {}
        for attr, spec in info["openapi_types"].items():
            prop = _openapi_type(spec, prefix)
            if attr in info["descriptions"]:
                prop["description"] = info["descriptions"][attr]
            props[names[attr]] = prop
        body: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
        if info["required"]:
            body["required"] = sorted(names[a] for a in info["required"])
        own[f"{prefix}.{cls.removeprefix('KubeflowOrgV1')}"] = body
    defs = {**k8s_defs, **own}
    root = copy.deepcopy(own[f"{prefix}.PyTorchJob"])
    root["properties"]["apiVersion"] = {"type": "string", "enum": ["kubeflow.org/v1"]}
    root["properties"]["kind"] = {"type": "string", "enum": ["PyTorchJob"]}
    root["properties"]["status"] = {"type": "object", "description": "Set by the operator; never in a manifest."}
    root["required"] = ["apiVersion", "kind", "spec"]
    return {"kubeflow.org/pytorchjob_v1.json": standalone(root, defs, "PyTorchJob (kubeflow.org/v1, strict)")}


def write(path: Path, schema: dict[str, Any]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(schema, indent=1, ensure_ascii=False) + "\n"
    path.write_text(text)
    return hashlib.sha256(text.encode()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheels", type=Path, required=True, help="directory with the unpacked input wheels")
    args = parser.parse_args()
    k8s_defs = k8s_definitions(args.wheels)
    outputs: dict[str, dict[str, Any]] = {
        f"kubernetes/{K8S_VERSION}-standalone-strict/{name}.json": builtin_schema(args.wheels, name, k8s_defs)
        for name in BUILTIN_KINDS
    }
    outputs |= {f"crds/{k}": v for k, v in kuberay_schemas(k8s_defs).items()}
    outputs |= {f"crds/{k}": v for k, v in kubeflow_schemas(args.wheels, k8s_defs).items()}
    for rel, schema in outputs.items():
        print(f"| `{rel}` | `{write(HERE / rel, schema)}` |")


if __name__ == "__main__":
    main()
