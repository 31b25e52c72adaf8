"""infra/: the Kubernetes base job template, prefect.yaml and the images' pins, checked with
Prefect's own code; and a real local Prefect server (flows/server.py) that takes the work
pool and the deployment as `prefect work-pool create` and `prefect deploy` send them.

What no test here can check: building the images, and a Kubernetes worker running a flow
run (no cluster, no prefect-kubernetes): see infra/README.md."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
import yaml
from conftest import REPO

from distillprep.flows.server import local_server, server_env

TEMPLATE = REPO / "infra" / "k8s-base-job-template.json"
PREFECT_YAML = REPO / "infra" / "prefect.yaml"
PLACEHOLDER = re.compile(r"{{\s*([\w.\-\[\]$]+)\s*}}")  # Prefect's PLACEHOLDER_CAPTURE_REGEX
CLI_TIMEOUT_S = 180


def _template() -> dict:
    return json.loads(TEMPLATE.read_text())


def _deployment() -> dict:
    [deployment] = yaml.safe_load(PREFECT_YAML.read_text())["deployments"]
    return deployment


def _render(job_variables: dict) -> dict:
    """The job configuration a worker builds for a flow run: the variables' defaults, then
    the deployment's values, applied by Prefect's templating (what
    `BaseJobConfiguration.from_template_and_values` does before the worker adds the run's
    command, env, name and labels)."""
    from prefect.utilities.templating import apply_values

    template = _template()
    values = {name: spec["default"] for name, spec in template["variables"]["properties"].items()
              if spec.get("default") is not None}
    values.update(job_variables)
    return apply_values(template["job_configuration"], values)


def _pod(configuration: dict) -> tuple[dict, dict]:
    """(pod spec, the `prefect-job` container) of a job configuration."""
    pod = configuration["job_manifest"]["spec"]["template"]["spec"]
    [container] = [c for c in pod["containers"] if c["name"] == "prefect-job"]
    return pod, container


def test_template_declares_exactly_the_variables_it_uses():
    from prefect.server.schemas.actions import validate_base_job_template

    template = _template()
    declared = set(template["variables"]["properties"])
    used = set(PLACEHOLDER.findall(json.dumps(template["job_configuration"])))
    assert not declared - used, f"declared but never used (Prefect drops them): {declared - used}"
    assert not used - declared, f"used but not declared: {used - declared}"
    assert {"gpu_limit", "cpu_request", "memory_request", "node_selector",
            "tolerations"} <= declared
    assert validate_base_job_template(template) == template  # the server's own check


def test_template_renders_gpu_and_cpu_jobs():
    gpu_pod, gpu = _pod(_render(_deployment()["work_pool"]["job_variables"]))
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["resources"]["requests"] == {"cpu": "8", "memory": "32Gi"}
    assert gpu_pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert gpu_pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    volumes = {v["name"] for v in gpu_pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in gpu["volumeMounts"]}
    assert set(mounts.values()) <= volumes
    parameters = _deployment()["parameters"]
    for path in (parameters["dataroot"], parameters["config_file"], parameters["work_dir"]):
        assert any(path.startswith(mount + "/") for mount in mounts), f"{path} is not mounted"

    cpu_pod, cpu = _pod(_render({"gpu_limit": 0, "node_selector": {}, "tolerations": [],
                                 "image": "distillprep:cpu"}))
    assert cpu["resources"]["limits"] == {"nvidia.com/gpu": 0}
    assert cpu_pod["nodeSelector"] == {} and cpu_pod["tolerations"] == []
    assert "volumes" not in cpu_pod and "volumeMounts" not in cpu  # unset: left out
    for rendered in (_render(_deployment()["work_pool"]["job_variables"]), _render({})):
        assert "{{" not in json.dumps(rendered)


def test_prefect_yaml_deploys_the_flow_on_the_pool():
    project = yaml.safe_load(PREFECT_YAML.read_text())
    deployment = _deployment()
    assert deployment["name"] == "prepare-dataset"
    assert deployment["entrypoint"] == "flows/prepare.py:prepare_dataset"
    assert (REPO / deployment["entrypoint"].split(":")[0]).is_file()
    assert deployment["work_pool"]["name"] == "distillprep-k8s"
    assert set(deployment["work_pool"]["job_variables"]) <= set(
        _template()["variables"]["properties"])
    assert deployment["parameters"]["dataroot"] == "/data/nuscenes"
    assert deployment["parameters"]["store"] == "s3://bucket/store.zarr"
    [pull] = project["pull"]
    assert pull["prefect.deployments.steps.set_working_directory"]["directory"] == (
        "/opt/distillprep")


def test_pins_are_pyprojects():
    import tomllib

    sys.path.insert(0, str(REPO / "infra"))
    try:
        from pins import pins
    finally:
        sys.path.remove(str(REPO / "infra"))
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    torch = pins("torch", [])
    assert [r.split("==")[0] for r in torch] == ["torch", "torchvision"]
    assert sorted(torch + pins("rest", [])) == sorted(project["dependencies"])
    assert pins("rest", ["gpu"])[-1].startswith("spconv-cu126==")
    with pytest.raises(ValueError, match="unknown extras"):
        pins("rest", ["cuda"])


def _prefect(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Runs the Prefect CLI against the test server; fails the test, quoting it, on error."""
    result = subprocess.run([sys.executable, "-m", "prefect", *args], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    assert result.returncode == 0, f"prefect {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    """(API URL, client env, server home) of a real local server for this module's tests."""
    root = tmp_path_factory.mktemp("prefect")
    with local_server(root / "server") as url:
        # clients get their own home: nothing is written to ~/.prefect
        env = {**os.environ, **server_env(url), "PREFECT_HOME": str(root / "client")}
        yield url, env, root / "server"
    with pytest.raises(urllib.error.URLError):  # stopped with the context
        urllib.request.urlopen(f"{url}/health", timeout=5)


@pytest.fixture(scope="module")
def k8s_pool(prefect_api) -> str:
    _, env, _ = prefect_api
    _prefect(env, "work-pool", "create", "distillprep-k8s-test", "--type", "kubernetes",
             "--base-job-template", str(TEMPLATE))
    return "distillprep-k8s-test"


# A real local server (~25 s to start on 2 cores) for the pool and the deployment: slow set
@pytest.mark.slow
def test_server_creates_the_kubernetes_pool(prefect_api, k8s_pool):
    url, env, home = prefect_api
    assert url.startswith("http://127.0.0.1:") and url.endswith("/api")
    assert (home / "prefect.db").is_file() and (home / "server.log").is_file()
    pool = json.loads(_prefect(env, "work-pool", "inspect", k8s_pool, "--output", "json").stdout)
    assert pool["type"] == "kubernetes"
    assert pool["base_job_template"] == _template()
    gpu = pool["base_job_template"]["variables"]["properties"]["gpu_limit"]
    assert gpu["type"] == "integer" and gpu["default"] == 1


@pytest.mark.slow
def test_prefect_deploy_registers_the_deployment(prefect_api, k8s_pool):
    """`prefect deploy` loads the flow from the entrypoint and the server checks the job
    variables against the pool's template; the parameters must be the flow's."""
    _, env, _ = prefect_api
    _prefect(env, "--no-prompt", "deploy", "--prefect-file", str(PREFECT_YAML),
             "--name", "prepare-dataset", "--pool", k8s_pool)
    deployment = json.loads(_prefect(env, "deployment", "inspect",
                                     "prepare-dataset/prepare-dataset", "--output",
                                     "json").stdout)
    expected = _deployment()
    assert deployment["work_pool_name"] == k8s_pool
    assert deployment["entrypoint"] == expected["entrypoint"]
    assert deployment["job_variables"] == expected["work_pool"]["job_variables"]
    assert deployment["parameters"] == expected["parameters"]
    schema = deployment["parameter_openapi_schema"]
    assert set(expected["parameters"]) <= set(schema["properties"])
    assert set(schema["required"]) <= set(expected["parameters"])


def test_server_that_cannot_start_says_why(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"(?s)exited.*{port}.*already in use"):
            with local_server(tmp_path / "prefect", port=port, timeout_s=60):
                pass
