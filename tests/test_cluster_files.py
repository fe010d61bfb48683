"""The cluster files fit together and match the real schemas (no cluster, no Docker, fast).

- cluster/aws-gpu.yaml against Ray's shipped `ray/autoscaler/ray-schema.json`;
- cluster/kuberay-rayjob.yaml against the KubeRay RayJob CRD schema kept in
  tests/fixtures/kuberay/ (source commit recorded there), validated strictly;
- cluster/kuberay-mlflow.yaml (Namespace, PVCs, MLflow Deployment + Service): the fields
  that make it work with the RayJob (labels/selectors, ports, allowed hosts, claims);
- cluster/Dockerfile: the versions of constraints.txt, the image every file uses;
- the NTU sweep's concurrency against the launcher's GPU worker cap, storage paths.
Every check runs on a deliberately broken copy too (`test_checks_catch_broken_copies`).
"""

import copy
import functools
import json
import re
import shlex
import subprocess
from dataclasses import fields
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
FIXTURE = REPO / "tests/fixtures/kuberay/rayjob-v1-openapiv3-trimmed.yaml"
NTU_SWEEP = REPO / "experiments/sweeps/ntu60_temperature_queue_skeletons.yaml"
MAX_TTL_S = 600


# ---------------------------------------------------------------- loading


def load(name):
    return yaml.safe_load((CLUSTER / name).read_text())


def load_all(name):
    return [doc for doc in yaml.safe_load_all((CLUSTER / name).read_text()) if doc]


def constraints():
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not pinned with =="
            pins[name.strip().lower()] = version.strip()
    return pins


def project_version():
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def expected_image_tag():
    return f"{project_version()}-ray{constraints()['ray']}-py311-gpu"


def dockerfile_instructions(text):
    """(instruction, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in text.splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        buf += line.rstrip()
        if buf.endswith("\\"):
            buf = buf[:-1] + " "
            continue
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def parse_set_args(command):
    """--set KEY=VALUE pairs of an msclr command line (a string or argv)."""
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    pairs = {}
    for i, arg in enumerate(argv):
        if arg == "--set":
            key, _, value = argv[i + 1].partition("=")
            pairs[key] = value
    return pairs


def experiment(config, overrides):
    from msclr_platform.config import load_config

    return load_config(config, [f"{k}={v}" for k, v in overrides.items()])


# ---------------------------------------------------------------- CRD schema -> JSON schema

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)


def crd_to_jsonschema(node):
    """A Kubernetes structural schema (openAPIV3Schema) as JSON schema, validated the way
    `kubectl apply --validate=strict` does: unknown fields are errors (an object with
    `properties` and no `additionalProperties` allows nothing else, unless it is
    x-kubernetes-preserve-unknown-fields); `nullable` adds null; `int-or-string` is the
    anyOf it ships with (its `pattern` applies to strings only, as for quantities);
    int32/int64 formats become bounds; `default` and the other x-kubernetes-* keys (list
    and map merge semantics) do not constrain a manifest and are dropped."""
    if isinstance(node, list):
        return [crd_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key.startswith(("x-kubernetes-", "x-msclr-")) or key in ("default", "nullable", "description"):
            continue
        if key in ("properties", "patternProperties"):
            out[key] = {name: crd_to_jsonschema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not", "anyOf", "allOf", "oneOf"):
            out[key] = crd_to_jsonschema(value)
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if "properties" in node and "additionalProperties" not in node and not node.get(
        "x-kubernetes-preserve-unknown-fields"
    ):
        out["additionalProperties"] = False
    bounds = {"int32": INT32, "int64": INT64}.get(node.get("format"))
    if bounds and node.get("type") == "integer":
        out.setdefault("minimum", bounds[0])
        out.setdefault("maximum", bounds[1])
    return out


@functools.cache
def rayjob_validator():
    import jsonschema

    schema = crd_to_jsonschema(yaml.safe_load(FIXTURE.read_text())["openAPIV3Schema"])
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def rayjob_errors(job):
    errors = [
        f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in rayjob_validator().iter_errors(job)
    ]
    if job.get("apiVersion") != "ray.io/v1" or job.get("kind") != "RayJob":
        errors.append(f"apiVersion/kind {job.get('apiVersion')}/{job.get('kind')} is not ray.io/v1 RayJob")
    errors += metadata_errors(job)
    return errors


DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def metadata_errors(obj):
    meta = obj.get("metadata") or {}
    return [
        f"metadata.{k}: {meta.get(k)!r} is not a DNS-1123 label"
        for k in ("name", "namespace")
        if k in meta or k == "name"
        if not (isinstance(meta.get(k), str) and len(meta[k]) <= 63 and DNS1123.match(meta[k]))
    ]


# ---------------------------------------------------------------- pod helpers


def rayjob_pods(job):
    """(role, pod spec, replicas) of the RayJob's head and worker groups."""
    cluster = job["spec"]["rayClusterSpec"]
    pods = [("head", cluster["headGroupSpec"]["template"]["spec"], 1)]
    for group in cluster.get("workerGroupSpecs", []):
        pods.append((f"worker group {group['groupName']}", group["template"]["spec"], group))
    return pods


def claim_mounts(pod):
    """mountPath -> PVC claim name, for the pod's first container."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    out = {}
    for mount in pod["containers"][0].get("volumeMounts", []):
        claim = volumes.get(mount["name"], {}).get("persistentVolumeClaim")
        if claim:
            out[mount["mountPath"]] = claim["claimName"]
    return out


def under(path, mount):
    return path == mount or path.startswith(mount.rstrip("/") + "/")


def quantity(value):
    """A Kubernetes CPU/GPU quantity as a number ("8", 8, "500m")."""
    value = str(value)
    return float(value[:-1]) / 1000 if value.endswith("m") else float(value)


# ---------------------------------------------------------------- the checks
# Each returns a list of problems (empty = fine) so that the broken-copy test can run it
# on mutated inputs without a cluster.


def check_launcher(config):
    import jsonschema
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    errors = [f"ray-schema.json: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(config)]
    setup = [
        c
        for key in ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands")
        for c in config.get(key, [])
    ]
    setup += [c for t in config.get("available_node_types", {}).values() for c in t.get("initialization_commands", [])]
    for command in setup:  # versions come from the image; a pip install here would drift
        if re.search(r"\bpip3? install\b", command):
            errors.append(f"setup command installs packages outside the image: {command[:80]}")
    if not config.get("docker", {}).get("image"):
        errors.append("docker.image missing: the nodes would not run the msclr image")
    types = config.get("available_node_types", {})
    head = types.get(config.get("head_node_type"), {})
    if head.get("resources", {}).get("GPU"):
        errors.append("the head offers GPUs: trainings would land there")
    gpu_cap = sum(t.get("max_workers", 0) for n, t in types.items() if t["resources"].get("GPU"))
    if config.get("max_workers", 0) < gpu_cap:
        errors.append(f"cluster max_workers {config.get('max_workers')} < the GPU node types' max_workers {gpu_cap}")
    return errors


def launcher_capacity(config):
    types = config["available_node_types"]
    gpu_types = [t for t in types.values() if t["resources"].get("GPU")]
    head = types[config["head_node_type"]]
    return {
        "gpus": sum(t["max_workers"] * t["resources"]["GPU"] for t in gpu_types),
        "gpu_node_cpus": min(t["resources"].get("CPU", 0) for t in gpu_types),
        "gpu_node_gpus": min(t["resources"]["GPU"] for t in gpu_types),
        "head_cpus": head["resources"].get("CPU", 0),
    }


def check_sweep_fits(sweep, capacity):
    """The sweep's concurrent trials fit the launcher's worker cap, node by node."""
    from msclr_platform.sweep import SweepSpec

    defaults = {f.name: f.default for f in fields(SweepSpec)}
    ray_overrides = {k: v for k, v in sweep.get("overrides", {}).items() if k.startswith("ray.")}
    cfg = experiment(NTU_SWEEP.parent / sweep["base"], ray_overrides)
    concurrent = sweep.get("max_concurrent_trials", defaults["max_concurrent_trials"])
    trial_cpus = sweep.get("trial_cpus", defaults["trial_cpus"])
    gpus_per_trial = cfg.ray.num_workers * cfg.ray.gpus_per_worker if cfg.ray.use_gpu else 0
    errors = []
    if concurrent * gpus_per_trial > capacity["gpus"]:
        errors.append(
            f"max_concurrent_trials {concurrent} x {gpus_per_trial:g} GPUs per trial > the launcher's "
            f"{capacity['gpus']:g} GPUs (gpu_worker max_workers x GPU): raise the cap or lower the concurrency"
        )
    if cfg.ray.cpus_per_worker > capacity["gpu_node_cpus"] or cfg.ray.gpus_per_worker > capacity["gpu_node_gpus"]:
        worker = f"{cfg.ray.cpus_per_worker:g} CPU, {cfg.ray.gpus_per_worker:g} GPU"
        errors.append(f"a Train worker ({worker}) does not fit one GPU node")
    if concurrent * trial_cpus > capacity["head_cpus"]:
        errors.append(
            f"{concurrent} trial drivers x {trial_cpus:g} CPU do not fit the head's {capacity['head_cpus']:g} CPUs"
        )
    return errors


def check_rayjob(job, manifests, sweep):
    errors = rayjob_errors(job)
    if errors:
        return errors
    spec = job["spec"]
    if spec.get("shutdownAfterJobFinishes") is not True:
        errors.append("shutdownAfterJobFinishes is not true: the RayCluster (and its GPUs) outlives the job")
    if spec.get("ttlSecondsAfterFinished", 0) > MAX_TTL_S:
        errors.append(
            f"ttlSecondsAfterFinished {spec.get('ttlSecondsAfterFinished')} > {MAX_TTL_S}: GPUs held after the job"
        )
    if not spec.get("activeDeadlineSeconds"):
        errors.append("no activeDeadlineSeconds: a hung job holds its GPUs for ever")
    argv = shlex.split(spec["entrypoint"])
    if argv[:2] != ["msclr", "pretrain"] or not argv[2].startswith("/app/"):
        errors.append(f"entrypoint {argv[:3]} is not `msclr pretrain /app/<config>` (the image's /app)")
        return errors
    if not (REPO / argv[2].removeprefix("/app/")).is_file():
        errors.append(f"entrypoint config {argv[2]} is not in the repository (the image copies experiments/ to /app)")
        return errors
    sets = parse_set_args(argv)
    cfg = experiment(REPO / argv[2].removeprefix("/app/"), sets)
    pods = rayjob_pods(job)
    # shared storage: storage_path and data.path on a PVC every Ray pod mounts
    for key, value in (("ray.storage_path", cfg.ray.storage_path), ("data.path", cfg.data.path)):
        for role, pod, _ in pods:
            if not any(under(str(value), m) for m in claim_mounts(pod)):
                errors.append(f"{key}={value} is not on a PVC mounted in the {role} pod ({claim_mounts(pod)})")
    sweep_storage = sweep["overrides"].get("ray.storage_path", "")
    if not any(under(sweep_storage, m) for m in claim_mounts(pods[0][1])):
        errors.append(f"the NTU sweep's ray.storage_path {sweep_storage} is not on the RayJob's shared PVC")
    # claims exist, and a claim shared by several pods can be mounted by several nodes
    pvcs = {m["metadata"]["name"]: m for m in manifests if m["kind"] == "PersistentVolumeClaim"}
    pods_using = {}
    for role, pod, group in pods:
        for claim in claim_mounts(pod).values():
            pods_using[claim] = pods_using.get(claim, 0) + (1 if role == "head" else group["maxReplicas"])
    for claim, n in pods_using.items():
        if claim not in pvcs:
            errors.append(f"PVC {claim} is used by the RayJob but not defined in kuberay-mlflow.yaml")
        elif n > 1 and "ReadWriteMany" not in pvcs[claim]["spec"]["accessModes"]:
            errors.append(f"PVC {claim} is mounted by {n} pods but is not ReadWriteMany")
    namespaces = {m["metadata"].get("namespace") for m in manifests if m["kind"] != "Namespace"}
    if namespaces != {job["metadata"].get("namespace")}:
        errors.append(f"RayJob namespace {job['metadata'].get('namespace')} != the manifests' {namespaces}")
    # GPUs: the Train workers use exactly the worker pods' GPUs, and each fits one pod
    workers = [(group, pod) for role, pod, group in pods if role != "head"]
    gpus = 0
    for group, pod in workers:
        if not group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]:
            errors.append(f"group {group['groupName']}: replicas outside [minReplicas, maxReplicas]")
        limits = pod["containers"][0].get("resources", {}).get("limits", {})
        gpus += group["maxReplicas"] * quantity(limits.get("nvidia.com/gpu", 0))
        if cfg.ray.cpus_per_worker > quantity(limits.get("cpu", 0)) or cfg.ray.gpus_per_worker > quantity(
            limits.get("nvidia.com/gpu", 0)
        ):
            errors.append(
                f"a Train worker ({cfg.ray.cpus_per_worker:g} CPU) does not fit a {group['groupName']} pod ({limits})"
            )
    want = cfg.ray.num_workers * cfg.ray.gpus_per_worker if cfg.ray.use_gpu else 0
    if want != gpus:
        errors.append(f"ray.num_workers x gpus_per_worker = {want:g} GPUs, the worker groups hold {gpus:g}")
    if pods[0][1]["containers"][0].get("resources", {}).get("limits", {}).get("nvidia.com/gpu"):
        errors.append("the head pod holds a GPU: no training runs there")
    return errors


def check_mlflow_service(job, manifests):
    """The MLflow Deployment + Service answer at the RayJob's MLFLOW_TRACKING_URI."""
    from mlflow.server.security_utils import get_default_allowed_hosts, is_allowed_host_header

    errors = []
    for m in manifests:
        errors += [f"{m.get('kind')}: {e}" for e in metadata_errors(m)]
    by_kind = {}
    for m in manifests:
        by_kind.setdefault(m["kind"], []).append(m)
    uri = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]["MLFLOW_TRACKING_URI"]
    parts = urlsplit(uri)
    host = parts.hostname or ""
    name, _, rest = host.partition(".")
    namespace = rest.split(".")[0] if rest else job["metadata"].get("namespace")
    services = [s for s in by_kind.get("Service", []) if s["metadata"]["name"] == name]
    in_cluster = ("", namespace, f"{namespace}.svc", f"{namespace}.svc.cluster.local")
    if parts.scheme != "http" or not services or rest not in in_cluster:
        return errors + [f"MLFLOW_TRACKING_URI {uri} names no Service of kuberay-mlflow.yaml"]
    service = services[0]
    if service["metadata"].get("namespace") != namespace:
        errors.append(
            f"Service {name} is in namespace {service['metadata'].get('namespace')}, the URI says {namespace}"
        )
    port = parts.port or 80
    svc_ports = [p for p in service["spec"]["ports"] if p["port"] == port]
    if not svc_ports:
        return errors + [f"Service {name} has no port {port} (MLFLOW_TRACKING_URI {uri})"]
    selector = service["spec"]["selector"]
    deployments = [
        d
        for d in by_kind.get("Deployment", [])
        if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
    ]
    if len(deployments) != 1:
        return errors + [f"Service {name}'s selector {selector} matches {len(deployments)} Deployments"]
    deployment = deployments[0]
    template = deployment["spec"]["template"]
    if not deployment["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items():
        errors.append("the Deployment's selector does not match its own pod labels")
    container = template["spec"]["containers"][0]
    target = svc_ports[0].get("targetPort", port)
    cports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    container_port = cports.get(target) if isinstance(target, str) else (target if target in cports.values() else None)
    argv = container.get("command", []) + container.get("args", [])
    flags = dict(a.removeprefix("--").partition("=")[::2] for a in argv if a.startswith("--"))
    if container_port is None or str(container_port) != flags.get("port"):
        errors.append(
            f"Service targetPort {target} -> container port {container_port}, "
            f"mlflow listens on --port={flags.get('port')}"
        )
    if flags.get("host") != "0.0.0.0":
        errors.append("mlflow server does not listen on the pod network (--host=0.0.0.0)")
    allowed = [h.strip() for h in flags.get("allowed-hosts", "").split(",") if h.strip()]
    if allowed and not is_allowed_host_header(allowed, parts.netloc):  # MLflow's own check
        errors.append(f"mlflow --allowed-hosts {allowed} rejects the clients' Host header {parts.netloc}")
    if not allowed and not is_allowed_host_header(get_default_allowed_hosts(), parts.netloc):
        errors.append(f"mlflow's default allowed hosts reject {parts.netloc}: pass --allowed-hosts")
    backend = flags.get("backend-store-uri", "")
    if backend.startswith("sqlite") and (
        deployment["spec"].get("replicas", 1) != 1 or flags.get("workers") != "1"
    ):
        errors.append("sqlite takes one writer: one replica, --workers=1")
    volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
    pvcs = {m["metadata"]["name"]: m for m in by_kind.get("PersistentVolumeClaim", [])}
    mounts = [m["mountPath"] for m in container.get("volumeMounts", [])]
    for mount in container.get("volumeMounts", []):
        if mount["name"] not in volumes:
            errors.append(f"volumeMount {mount['name']} has no volume")
            continue
        claim = volumes[mount["name"]].get("persistentVolumeClaim", {}).get("claimName")
        if claim and claim not in pvcs:
            errors.append(f"the Deployment uses PVC {claim}, which is not defined")
        elif claim and "ReadWriteOnce" in pvcs[claim]["spec"]["accessModes"] and deployment["spec"].get(
            "strategy", {}
        ).get("type") != "Recreate":
            errors.append(f"PVC {claim} is ReadWriteOnce: the Deployment needs strategy Recreate")
    for key in ("backend-store-uri", "artifacts-destination"):
        path = flags.get(key, "").removeprefix("sqlite:///")
        if path.startswith("/") and not any(under(path, m) for m in mounts):
            errors.append(f"--{key} {flags.get(key)} is not on a mounted volume: it dies with the pod")
    if by_kind.get("Namespace") and {n["metadata"]["name"] for n in by_kind["Namespace"]} != {namespace}:
        errors.append("the Namespace object is not the RayJob's namespace")
    return errors


def check_images(files, dockerfile):
    """One image everywhere, its tag naming the versions, built from cluster/Dockerfile."""
    images = {}
    aws = files["aws-gpu.yaml"]
    images["aws-gpu.yaml docker.image"] = aws["docker"]["image"]
    for role, pod, _ in rayjob_pods(files["kuberay-rayjob.yaml"]):
        for c in pod["containers"]:
            images[f"kuberay-rayjob.yaml {role} {c['name']}"] = c["image"]
    for m in files["kuberay-mlflow.yaml"]:
        if m["kind"] == "Deployment":
            for c in m["spec"]["template"]["spec"]["containers"]:
                images[f"kuberay-mlflow.yaml {m['metadata']['name']} {c['name']}"] = c["image"]
    errors = []
    if len(set(images.values())) != 1:
        errors.append(f"the cluster files use different images: {images}")
    tag = expected_image_tag()
    for where, image in images.items():
        if image.rpartition(":")[2] != tag:
            errors.append(f"{where}: image {image} is not tagged {tag} (msclr-ray-python versions)")
    built = re.findall(r"docker build -f cluster/Dockerfile -t (\S+) \.", dockerfile)
    if not built or any(b not in images.values() for b in built):
        errors.append(f"cluster/Dockerfile's build command tags {built}, the cluster files use {set(images.values())}")
    ray_version = files["kuberay-rayjob.yaml"]["spec"]["rayClusterSpec"]["rayVersion"]
    if ray_version != constraints()["ray"]:
        errors.append(f"RayJob rayVersion {ray_version} != constraints.txt ray {constraints()['ray']}")
    return errors


def check_dockerfile(text, s3_users):
    pins = constraints()
    instructions = dockerfile_instructions(text)
    errors = []
    args = dict(a.partition("=")[::2] for w, a in instructions if w == "ARG" and "=" in a)
    if args.get("RAY_VERSION") != pins["ray"]:
        errors.append(f"ARG RAY_VERSION={args.get('RAY_VERSION')} != constraints.txt ray=={pins['ray']}")
    base = next((a for w, a in instructions if w == "FROM"), "")
    if not re.fullmatch(r"rayproject/ray:\$\{RAY_VERSION\}-\$\{PYTHON_TAG\}-gpu", base):
        errors.append(f"FROM {base}: not Ray's CUDA image at ${{RAY_VERSION}}")
    if args.get("PYTHON_TAG") != "py311":
        errors.append(f"ARG PYTHON_TAG={args.get('PYTHON_TAG')} but the image tag says py311")
    runs = [a for w, a in instructions if w == "RUN"]
    copies = " ".join(a for w, a in instructions if w == "COPY")
    if "constraints.txt" not in copies:
        errors.append("constraints.txt is not copied into the image")
    installs = [r for r in runs if re.search(r"\bpip3? install\b", r)]
    if not installs:
        errors.append("no pip install")
    for run in installs:
        if "-c constraints.txt" not in run:
            errors.append(f"a pip install without -c constraints.txt: {run[:80]}")
    for name, version in re.findall(r"(?<![\w.-])([A-Za-z0-9_.\-\[\],]+)==([\w.+]+)", " ".join(runs)):
        name = name.split("[")[0].lower()
        if pins.get(name) != version:
            errors.append(f"the Dockerfile pins {name}=={version}, constraints.txt says {pins.get(name)}")
    deps = " ".join(installs)
    if "pyproject.toml" not in deps or "-r /tmp/requirements.txt" not in deps:
        errors.append("the project's dependencies (pyproject.toml) are not installed under the constraints")
    if not any(re.search(r"pip install .*--no-deps.* \.(\s|$)", r) for r in installs):
        errors.append("msclr itself is not installed (pip install --no-deps .)")
    for pkg in ("boto3", "s3fs"):
        if s3_users and not re.search(rf"(?<![\w-]){pkg}(?![\w-])", deps):
            errors.append(f"{', '.join(s3_users)} use s3:// but the image lacks {pkg}")
    return errors


def cluster_section(readme):
    start = readme.index("## Clusters and `ray job submit`")
    return readme[start : readme.index("\n## ", start + 5)]


def check_readme(readme, files):
    """The README's AWS commands put checkpoints on S3; it states the cap/concurrency rule."""
    section = cluster_section(readme)
    errors = []
    aws = section[section.index("### AWS") : section.index("\n### ", section.index("### AWS") + 5)]
    commands = [c for c in aws.replace("\\\n", " ").splitlines() if re.search(r"\bmsclr (pretrain|sweep)\b", c)]
    if not commands:
        errors.append("the README's AWS part submits no msclr command")
    for command in commands:
        if not re.search(r"ray\.storage_path=s3://", command):
            errors.append(f"README AWS command without ray.storage_path=s3://...: {command.strip()[:100]}")
    for needle in ("max_concurrent_trials", "max_workers"):
        if needle not in section:
            errors.append(f"the README's cluster section does not say how to change {needle}")
    for name in ("Dockerfile", "kuberay-mlflow.yaml", "ray down", "ray up", "kubectl delete"):
        if name not in section:
            errors.append(f"the README's cluster section never mentions {name}")
    return errors


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def files():
    return {
        "aws-gpu.yaml": load("aws-gpu.yaml"),
        "kuberay-rayjob.yaml": load("kuberay-rayjob.yaml"),
        "kuberay-mlflow.yaml": load_all("kuberay-mlflow.yaml"),
        "sweep": yaml.safe_load(NTU_SWEEP.read_text()),
        "Dockerfile": (CLUSTER / "Dockerfile").read_text(),
        "README": (REPO / "README.md").read_text(),
    }


def s3_users(files):
    names = ("aws-gpu.yaml", "kuberay-rayjob.yaml", "kuberay-mlflow.yaml")
    return [n for n in names if "s3://" in (CLUSTER / n).read_text()]


# ---------------------------------------------------------------- tests


def test_every_cluster_yaml_is_checked():
    known = {"aws-gpu.yaml", "kuberay-rayjob.yaml", "kuberay-mlflow.yaml", "runtime_env.yaml"}
    assert {p.name for p in CLUSTER.glob("*.y*ml")} == known  # a new file needs its checks here


def test_launcher_yaml_matches_rays_schema(files):
    assert check_launcher(files["aws-gpu.yaml"]) == []


def test_rayjob_matches_the_kuberay_crd_schema(files):
    fixture = yaml.safe_load(FIXTURE.read_text())
    assert fixture["source"]["repository"] == "ray-project/kuberay" and len(fixture["source"]["commit"]) == 40
    assert rayjob_errors(files["kuberay-rayjob.yaml"]) == []


def test_rayjob_frees_gpus_and_uses_shared_storage(files):
    assert check_rayjob(files["kuberay-rayjob.yaml"], files["kuberay-mlflow.yaml"], files["sweep"]) == []


def test_mlflow_service_answers_the_rayjobs_tracking_uri(files):
    assert check_mlflow_service(files["kuberay-rayjob.yaml"], files["kuberay-mlflow.yaml"]) == []


def test_one_image_everywhere(files):
    import ray

    assert constraints()["ray"] == ray.__version__  # the tests run the Ray the image pins
    assert check_images(files, files["Dockerfile"]) == []


def test_dockerfile_pins_the_constraints(files):
    users = s3_users(files)
    assert "aws-gpu.yaml" in users  # the launcher's MLflow artifacts and checkpoints are on S3
    assert check_dockerfile(files["Dockerfile"], users) == []


def test_ntu_sweep_concurrency_matches_the_launchers_gpu_cap(files):
    assert check_sweep_fits(files["sweep"], launcher_capacity(files["aws-gpu.yaml"])) == []


def test_readme_cluster_recipe(files):
    assert check_readme(files["README"], files) == []


def test_local_head_script():
    text = (CLUSTER / "local-head.sh").read_text()
    assert subprocess.run(["bash", "-n", str(CLUSTER / "local-head.sh")]).returncode == 0
    assert "--node-ip-address=127.0.0.1" in text and "--dashboard-host=127.0.0.1" in text  # loopback only
    assert 'cd "$(dirname "$0")/.."' in text and "--working-dir ." in text  # uploads the repository root
    assert text.index("6379), 1)") < text.index("trap 'ray stop' EXIT")  # never stops a runtime it did not start


def _broken(files, path, value):
    out = copy.deepcopy(files)
    node = out
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return out


def test_checks_catch_broken_copies(files):
    """Every check above fails on a copy broken the way these files break in practice."""
    job = ["kuberay-rayjob.yaml"]
    spec = [*job, "spec"]
    rc = [*spec, "rayClusterSpec"]
    head = [*rc, "headGroupSpec", "template", "spec"]
    worker = [*rc, "workerGroupSpecs", 0]
    wpod = [*worker, "template", "spec"]
    mlflow = ["kuberay-mlflow.yaml"]
    deploy = next(i for i, m in enumerate(files["kuberay-mlflow.yaml"]) if m["kind"] == "Deployment")
    service = next(i for i, m in enumerate(files["kuberay-mlflow.yaml"]) if m["kind"] == "Service")
    shared = next(i for i, m in enumerate(files["kuberay-mlflow.yaml"]) if m["metadata"]["name"] == "msclr-shared")
    mcmd = [*mlflow, deploy, "spec", "template", "spec", "containers", 0, "command"]
    aws = ["aws-gpu.yaml"]

    def rayjob(f):
        return check_rayjob(f["kuberay-rayjob.yaml"], f["kuberay-mlflow.yaml"], f["sweep"])

    def service_check(f):
        return check_mlflow_service(f["kuberay-rayjob.yaml"], f["kuberay-mlflow.yaml"])

    def sweep_fits(f):
        return check_sweep_fits(f["sweep"], launcher_capacity(f["aws-gpu.yaml"]))

    cmd = files["kuberay-mlflow.yaml"][deploy]["spec"]["template"]["spec"]["containers"][0]["command"]
    entry = files["kuberay-rayjob.yaml"]["spec"]["entrypoint"]
    cases = [
        # CRD schema: a typo, a wrong type, a missing required field, a bad quantity
        (rayjob, [*spec, "shutdownAfterJobFinish"], True),
        (rayjob, [*spec, "ttlSecondsAfterFinished"], "300"),
        (rayjob, [*worker, "minReplicas"], KeyError),
        (rayjob, [*wpod, "containers", 0, "resources", "limits", "cpu"], "eight"),
        (rayjob, [*head, "containers", 0, "imagePullSecret"], "x"),
        (rayjob, [*rc, "headGroupSpec", "rayStartParams", "num-cpus"], 1),
        (rayjob, [*job, "metadata", "name"], "MSCLR_job"),
        # GPUs freed, storage shared, GPU count consistent
        (rayjob, [*spec, "ttlSecondsAfterFinished"], 3600),
        (rayjob, [*spec, "shutdownAfterJobFinishes"], False),
        (rayjob, [*spec, "entrypoint"], entry.replace("ray.storage_path=/shared/ray", "ray.storage_path=/tmp/ray")),
        (rayjob, [*spec, "entrypoint"], entry.replace("ray.num_workers=1", "ray.num_workers=2")),
        (rayjob, [*wpod, "volumes", 0, "persistentVolumeClaim", "claimName"], "msclr-data"),
        (rayjob, [*mlflow, shared, "spec", "accessModes"], ["ReadWriteOnce"]),
        (rayjob, ["sweep", "overrides", "ray.storage_path"], "/home/ray/ray"),
        # MLflow Deployment + Service + the RayJob's URI
        (service_check, [*mlflow, service, "spec", "ports", 0, "port"], 80),
        (service_check, [*mlflow, service, "spec", "selector"], {"app.kubernetes.io/name": "mlfow"}),
        (service_check, [*mlflow, deploy, "spec", "selector", "matchLabels"], {"app": "other"}),
        (service_check, mcmd, [c for c in cmd if not c.startswith("--allowed-hosts")] + ["--allowed-hosts=x:*"]),
        (service_check, mcmd, [c.replace("--port=5000", "--port=5001") for c in cmd]),
        (service_check, mcmd, [c.replace("--workers=1", "--workers=4") for c in cmd]),
        (service_check, [*mlflow, deploy, "spec", "strategy"], {"type": "RollingUpdate"}),
        (service_check, mcmd, [c.replace("/mlflow/mlflow.db", "/tmp/mlflow.db") for c in cmd]),
        # the launcher
        (lambda f: check_launcher(f["aws-gpu.yaml"]), [*aws, "setup_commands"], ["pip install ray"]),
        (lambda f: check_launcher(f["aws-gpu.yaml"]), [*aws, "available_node_types", "gpu_worker", "min_worker"], 0),
        (lambda f: check_launcher(f["aws-gpu.yaml"]), [*aws, "max_workers"], 4),
        # sweep concurrency vs the worker cap
        (sweep_fits, ["sweep", "max_concurrent_trials"], 16),
        (sweep_fits, [*aws, "available_node_types", "gpu_worker", "max_workers"], 4),
        (sweep_fits, [*aws, "available_node_types", "gpu_worker", "resources", "CPU"], 4),
        (sweep_fits, [*aws, "available_node_types", "head", "resources", "CPU"], 0),
        # images
        (lambda f: check_images(f, f["Dockerfile"]), [*aws, "docker", "image"], "rayproject/ray:2.60.0-py311-gpu"),
        (lambda f: check_images(f, f["Dockerfile"]), [*rc, "rayVersion"], "2.59.0"),
    ]
    for check, path, value in cases:
        assert check(files) == [], (check, path)  # the check passes on the real files...
        assert check(_broken(files, path, value)), f"{path} = {value!r} went unnoticed"  # ...and fails here
    # the Dockerfile: another version than constraints.txt, no constraints, no boto3
    docker = files["Dockerfile"]
    users = s3_users(files)
    for broken in (
        docker.replace("ARG RAY_VERSION=2.60.0", "ARG RAY_VERSION=2.59.0"),
        docker.replace("-c constraints.txt -r", "-r"),
        docker.replace("boto3 s3fs", "s3fs"),
        docker.replace("nvidia-ml-py", "nvidia-ml-py torch==2.4.0"),
    ):
        assert broken != docker and check_dockerfile(broken, users)
    # the README: an AWS command that keeps checkpoints on a node's disk
    readme = files["README"]
    broken = readme.replace("ray.storage_path=s3://", "ray.storage_path=/home/ray/", 1)
    assert broken != readme and check_readme(broken, files)
