"""The deployment files, checked without a Docker engine: hadolint on the Dockerfile, the
compose-spec JSON schema on docker-compose.yml, and what the schema cannot see (the topology,
the stages the compose file builds, the env file, the proxy's config)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"


def tool(name: str) -> str:
    """A console script of this interpreter's environment, else one on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: it comes with the dev extra")
    return found


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


@pytest.fixture(scope="module")
def stages() -> dict[str, str]:
    """Dockerfile stage name -> its instructions, in file order."""
    found: dict[str, str] = {}
    parts = re.split(r"^FROM\s+\S+\s+AS\s+(\S+)\s*$", DOCKERFILE.read_text(), flags=re.M | re.I)
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        found[name] = body
    return found


def env_example() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


# --- the tools ---------------------------------------------------------------------------------


def test_dockerfile_passes_hadolint_with_no_finding() -> None:
    # failure threshold `info`: style findings fail too, nothing is waved through
    result = subprocess.run(
        [tool("hadolint"), "--failure-threshold", "info", "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_matches_the_compose_spec_schema() -> None:
    result = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_proxy_config_is_valid_haproxy(compose: dict[str, Any], tmp_path: Path) -> None:
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        if os.environ.get("CI"):
            pytest.fail("haproxy is not installed (Debian package `haproxy`)")
        pytest.skip("haproxy is not installed (Debian package `haproxy`)")
    config = tmp_path / "haproxy.cfg"
    config.write_text(compose["configs"]["haproxy"]["content"])
    result = subprocess.run([haproxy, "-c", "-f", str(config)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# --- the Dockerfile ----------------------------------------------------------------------------


def test_dockerfile_default_target_is_the_api(stages: dict[str, str]) -> None:
    name, body = list(stages.items())[-1]
    assert name == "api"
    assert 'CMD ["oracle", "serve", "--host", "0.0.0.0", "--port", "8000"]' in body


def test_dockerfile_runtime_stages_run_unprivileged_without_build_tools(
    stages: dict[str, str],
) -> None:
    for name in ("api", "trainer"):
        body = stages[name]
        user = re.findall(r"^USER\s+(\S+)", body, flags=re.M)
        assert user and user[-1].split(":")[0] not in ("root", "0"), name
        # only the finished virtualenv comes over from a build stage
        assert re.findall(r"^COPY\s+(.*)$", body, flags=re.M) == [
            f"--from=build{'-trainer' if name == 'trainer' else ''} /opt/venv /opt/venv"
        ]
        assert not re.search(r"apt-get|gcc|build-essential|pip install", body), name
    assert not re.search(r"apt-get|gcc|build-essential", stages["runtime"])


def test_dockerfile_installs_tensorflow_only_for_the_trainer(stages: dict[str, str]) -> None:
    with_training = [name for name, body in stages.items() if "[training]" in body]
    assert with_training == ["build-trainer"]  # and `api` copies its venv from `build` alone
    assert 'CMD ["oracle", "train", "--watch"]' in stages["trainer"]


def test_dockerfile_healthcheck_probes_healthz_with_python(stages: dict[str, str]) -> None:
    check = re.search(r"^HEALTHCHECK .*?CMD (.*)$", stages["api"], flags=re.M | re.S)
    assert check is not None
    assert '"python"' in check.group(1) and "/healthz" in check.group(1)
    assert "curl" not in check.group(1) and "wget" not in check.group(1)


# --- the compose file --------------------------------------------------------------------------


def test_compose_postgres_has_a_volume_and_a_tcp_readiness_check(compose: dict[str, Any]) -> None:
    postgres = compose["services"]["postgres"]
    assert postgres["image"].startswith("postgres:16")
    volume = postgres["volumes"][0].split(":")[0]
    assert volume in compose["volumes"]
    assert "pg_isready -h 127.0.0.1" in " ".join(postgres["healthcheck"]["test"])


def test_compose_runs_migrations_once_before_api_and_trainer(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["migrate"]["command"] == ["oracle", "migrate"]
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "trainer"):
        needs = services[name]["depends_on"]
        assert needs["migrate"]["condition"] == "service_completed_successfully", name
        assert needs["postgres"]["condition"] == "service_healthy", name
    assert services["proxy"]["depends_on"]["api"]["condition"] == "service_healthy"


def test_compose_serves_api_replicas_behind_one_published_port(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["api"]["deploy"]["replicas"] >= 2
    publishing = [name for name, s in services.items() if s.get("ports")]
    assert publishing == ["proxy"]
    assert services["proxy"]["ports"] == ["${ORACLE_PORT:-8000}:8000"]
    proxy_config = compose["configs"]["haproxy"]["content"]
    assert "api:8000" in proxy_config and "/healthz" in proxy_config


def test_compose_trainer_watches_with_the_tensorflow_image(compose: dict[str, Any]) -> None:
    trainer = compose["services"]["trainer"]
    assert trainer["command"] == ["oracle", "train", "--watch"]
    assert trainer["build"]["target"] == "trainer"
    assert compose["services"]["api"]["build"]["target"] == "api"


def test_compose_builds_only_stages_the_dockerfile_has(
    compose: dict[str, Any], stages: dict[str, str]
) -> None:
    for name, service in compose["services"].items():
        if "build" in service:
            assert service["build"]["target"] in stages, name
        for needed in service.get("depends_on", {}):
            assert needed in compose["services"], f"{name} depends on unknown {needed}"


def test_compose_takes_settings_and_tokens_from_the_env_file(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("postgres", "migrate", "api", "trainer"):
        files = [f["path"] for f in services[name]["env_file"]]
        assert files[0] == ".env.example", name
        assert not services[name].get("environment"), f"{name}: settings belong in the env file"
    env = env_example()
    roles = dict(pair.split(":", 1) for pair in env["ORACLE_TOKENS"].split(","))
    assert set(roles) == {"worker", "admin", "reader"}
    assert env["ORACLE_TOKEN"] == roles["worker"]
    url = re.fullmatch(
        r"postgresql\+psycopg://([^:]+):([^@]+)@postgres:5432/(\w+)", env["DATABASE_URL"]
    )
    assert url is not None
    assert url.groups() == (env["POSTGRES_USER"], env["POSTGRES_PASSWORD"], env["POSTGRES_DB"])
