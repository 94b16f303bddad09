"""The container definitions: lint-clean, and the compose file keeps the operational promises.

The compose assertions read ``docker-compose config`` output (anchors merged,
variables interpolated), which is what Docker would run, not the raw YAML.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML ships no type hints

from shared.settings import load_settings

pytestmark = pytest.mark.slow

GATEWAY_SERVICES = ("api", "worker", "init-db", "mock-downstream")
ONE_SHOTS = ("init-db", "init-db-ha", "mongo-init-replica-set")
HA_SERVICES = (
    *("redis-a", "redis-b", "sentinel-1", "sentinel-2", "sentinel-3"),
    *("mongo-1", "mongo-2", "mongo-3", "mongo-init-replica-set"),
    *("init-db-ha", "api-ha", "worker-ha"),
)
SENTINELS = ("sentinel-1", "sentinel-2", "sentinel-3")
MONGO_MEMBERS = ("mongo-1", "mongo-2", "mongo-3")
REPO_ROOT = Path(__file__).resolve().parents[2]


def run_check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(root / "scripts" / "check_containers.sh")],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


@pytest.fixture(scope="module")
def check_result() -> subprocess.CompletedProcess[str]:
    """One run of the check (which also installs Debian's docker-compose if missing)."""
    return run_check(REPO_ROOT)


@pytest.fixture(scope="module")
def compose(
    check_result: subprocess.CompletedProcess[str], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    empty_env = tmp_path_factory.mktemp("compose") / "empty.env"
    empty_env.write_text("")
    command = ["docker-compose", "--file", str(REPO_ROOT / "docker-compose.yml")]
    command += ["--env-file", str(empty_env), "--profile", "mock", "--profile", "ha", "config"]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


@pytest.fixture
def lint_tree(repo_root: Path, tmp_path: Path) -> Path:
    """A copy of just what check_containers.sh reads, to break on purpose."""
    for name in ("Dockerfile", "docker-compose.yml", ".hadolint.yaml"):
        shutil.copy(repo_root / name, tmp_path / name)
    (tmp_path / "scripts").mkdir()
    shutil.copy(repo_root / "scripts" / "check_containers.sh", tmp_path / "scripts")
    shutil.copytree(repo_root / "deploy", tmp_path / "deploy")
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "hadolint").symlink_to(repo_root / ".venv" / "bin" / "hadolint")
    return tmp_path


def test_container_check_passes_on_the_repository(
    check_result: subprocess.CompletedProcess[str],
) -> None:
    result = check_result
    assert result.returncode == 0, result.stdout + result.stderr
    assert "hadolint ./Dockerfile: ok" in result.stdout
    assert "check_containers: all clean" in result.stdout


def test_container_check_fails_on_a_dockerfile_finding(lint_tree: Path) -> None:
    dockerfile = lint_tree / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + "\nFROM runtime AS extra\nUSER root\n")
    result = run_check(lint_tree)
    assert result.returncode != 0
    assert "DL3002" in result.stdout  # last USER should not be root


def test_container_check_fails_on_an_invalid_compose_file(lint_tree: Path) -> None:
    compose_file = lint_tree / "docker-compose.yml"
    compose_file.write_text(compose_file.read_text().replace("replicas: 2", "replicas: two", 1))
    result = run_check(lint_tree)
    assert result.returncode != 0
    assert "config failed" in result.stderr


def test_workers_run_at_least_two_replicas(services: dict[str, dict[str, Any]]) -> None:
    assert services["worker"]["deploy"]["replicas"] >= 2


def test_every_long_running_service_has_a_health_check(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        if name in ONE_SHOTS:
            continue
        test = service["healthcheck"]["test"]
        assert test[0] in {"CMD", "CMD-SHELL"}, name
        assert not service["healthcheck"].get("disable", False), name


def test_one_shots_declare_no_health_check_and_no_restart(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in ("init-db", "init-db-ha"):
        assert services[name]["command"] == ["init-db"], name
    for name in ONE_SHOTS:
        assert services[name]["healthcheck"]["test"] == ["NONE"], name
        assert services[name]["restart"] == "no", name


def test_long_running_services_restart_unless_stopped(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        if name not in ONE_SHOTS:
            assert service["restart"] == "unless-stopped", name


def test_api_and_workers_start_after_healthy_stores_and_completed_init_db(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in ("api", "worker"):
        assert services[name]["depends_on"] == {
            "redis": {"condition": "service_healthy"},
            "mongo": {"condition": "service_healthy"},
            "init-db": {"condition": "service_completed_successfully"},
        }, name
    assert services["init-db"]["depends_on"] == {"mongo": {"condition": "service_healthy"}}


def test_redis_keeps_an_everysec_append_only_file_on_a_named_volume(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    redis = services["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert "--appendfsync everysec" in command
    volume = _named_volume_at(redis, "/data")
    assert volume in compose["volumes"]


def test_mongo_is_the_official_image_on_a_named_volume(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    mongo = services["mongo"]
    assert re.fullmatch(r"mongo:\d+(\.\d+)*", mongo["image"])
    assert _named_volume_at(mongo, "/data/db") in compose["volumes"]
    assert "mongosh" in mongo["healthcheck"]["test"]


def test_mock_downstream_and_the_ha_stack_run_only_under_their_profiles(
    services: dict[str, dict[str, Any]],
) -> None:
    assert services["mock-downstream"]["profiles"] == ["mock"]
    for name in HA_SERVICES:
        assert services[name]["profiles"] == ["ha"], name
    for name, service in services.items():
        if name != "mock-downstream" and name not in HA_SERVICES:
            assert "profiles" not in service, name


def test_worker_stop_grace_period_outlasts_the_shutdown_grace(
    services: dict[str, dict[str, Any]],
) -> None:
    worker = services["worker"]
    shutdown_grace_s = float(worker["environment"]["GATEWAY_SHUTDOWN_GRACE_S"])
    assert _seconds(worker["stop_grace_period"]) > shutdown_grace_s


def test_gateway_services_reach_the_stores_by_service_name(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in ("api", "worker", "init-db"):
        environment = services[name]["environment"]
        assert environment["GATEWAY_REDIS_URL"] == "redis://redis:6379/0", name
        assert environment["GATEWAY_MONGO_URL"].startswith("mongodb://mongo:27017"), name


def test_only_the_api_receives_the_courier_secrets(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    assert [s["source"] for s in services["api"]["secrets"]] == ["gateway_sources"]
    assert services["api"]["environment"]["GATEWAY_SOURCES_FILE"] == (
        "/run/secrets/gateway_sources"
    )
    assert [s["source"] for s in services["api-ha"]["secrets"]] == ["gateway_sources"]
    for name in ("worker", "init-db", "mock-downstream", "worker-ha", "init-db-ha"):
        assert "secrets" not in services[name], name
    assert compose["secrets"]["gateway_sources"]["file"].endswith("deploy/sources.example.json")


def test_ha_redis_is_a_primary_a_replica_and_three_sentinels_each_on_its_own_volume(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    primary, replica = _shell(services["redis-a"]), _shell(services["redis-b"])
    for script in (primary, replica):
        assert "'appendonly yes' 'appendfsync everysec'" in script
        assert "redis-server /data/redis.conf" in script
    assert "replicaof" not in primary
    assert "'replicaof redis-a 6379'" in replica
    assert services["redis-b"]["depends_on"] == {"redis-a": {"condition": "service_healthy"}}
    volumes = {_named_volume_at(services[name], "/data") for name in ("redis-a", "redis-b")}
    for name in SENTINELS:
        script = _shell(services[name])
        assert "'sentinel monitor gateway redis-a 6379 2'" in script, name
        assert "'sentinel resolve-hostnames yes'" in script, name
        assert "--sentinel" in script, name
        assert "26379" in " ".join(services[name]["healthcheck"]["test"]), name
        volumes.add(_named_volume_at(services[name], "/data"))
    assert len(volumes) == 5
    assert volumes <= set(compose["volumes"])


def test_ha_mongo_is_a_three_member_replica_set_initiated_by_a_one_shot(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    volumes = set()
    for name in MONGO_MEMBERS:
        member = services[name]
        assert member["image"] == services["mongo"]["image"], name
        assert member["command"] == ["mongod", "--replSet", "gateway", "--bind_ip_all"], name
        volumes.add(_named_volume_at(member, "/data/db"))
    assert len(volumes) == 3
    assert volumes <= set(compose["volumes"])
    init = services["mongo-init-replica-set"]
    assert init["depends_on"] == {m: {"condition": "service_healthy"} for m in MONGO_MEMBERS}
    script = init["command"][-1]
    assert 'rs.initiate({_id: "gateway"' in script
    for name in MONGO_MEMBERS:
        assert f'host: "{name}:27017"' in script, name
    assert services["init-db-ha"]["depends_on"] == {
        "mongo-init-replica-set": {"condition": "service_completed_successfully"}
    }


def test_ha_api_and_workers_use_the_sentinels_replicated_acks_and_the_replica_set(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in ("api-ha", "worker-ha", "init-db-ha"):
        environment = services[name]["environment"]
        settings = load_settings(
            {k: v for k, v in environment.items() if k != "GATEWAY_SOURCES_FILE"}
        )
        assert settings.redis_sentinels == ",".join(f"{s}:26379" for s in SENTINELS), name
        assert settings.redis_sentinel_master == "gateway", name
        assert settings.ack_replicas == 1, name
        assert settings.mongo_write_concern == "majority", name
        hosts = ",".join(f"{m}:27017" for m in MONGO_MEMBERS)
        assert settings.mongo_url == f"mongodb://{hosts}/?replicaSet=gateway", name
    ha_depends_on = {
        **{name: {"condition": "service_healthy"} for name in ("redis-a", "redis-b")},
        **{name: {"condition": "service_healthy"} for name in SENTINELS},
        "init-db-ha": {"condition": "service_completed_successfully"},
    }
    for name in ("api-ha", "worker-ha"):
        assert services[name]["depends_on"] == ha_depends_on, name
    assert services["worker-ha"]["deploy"]["replicas"] >= 2
    published = {p["published"] for name in ("api", "api-ha") for p in services[name]["ports"]}
    assert len(published) == 2  # both stacks can run side by side


def test_example_sources_file_holds_only_a_marked_test_secret(repo_root: Path) -> None:
    example = repo_root / "deploy" / "sources.example.json"
    settings = load_settings({"GATEWAY_SOURCES_FILE": str(example)})
    keys = [key for source in settings.sources.values() for key in source.hmac_keys()]
    assert keys
    assert all(key.startswith(b"TEST-ONLY") for key in keys)


def test_dockerfile_builds_from_the_lock_without_dev_groups_and_runs_unprivileged(
    repo_root: Path,
) -> None:
    text = (repo_root / "Dockerfile").read_text()
    syncs = re.findall(r"uv sync ([^\n]+)", text)
    assert syncs
    for flags in syncs:
        assert {"--locked", "--no-dev", "--no-default-groups"} <= set(flags.split())
    stages = _stages(text)
    assert stages["runtime"].count("USER 10001:10001") == 1
    for target in GATEWAY_SERVICES:
        assert target in stages, target
        assert "HEALTHCHECK" in stages[target], target
        assert "USER" not in stages[target], target  # inherits the non-root user


def _shell(service: dict[str, Any]) -> str:
    """The script of a ``sh -c`` command."""
    assert service["command"][:2] == ["sh", "-c"]
    return str(service["command"][2])


def _stages(dockerfile: str) -> dict[str, str]:
    parts = re.split(r"^FROM \S+ AS (\S+)$", dockerfile, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _named_volume_at(service: dict[str, Any], target: str) -> str:
    for volume in service["volumes"]:
        if isinstance(volume, str):
            name, _, path = volume.partition(":")
            if path.split(":")[0] == target:
                return name
        elif volume["target"] == target:
            assert volume["type"] == "volume"
            return str(volume["source"])
    raise AssertionError(f"no volume mounted at {target}")


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", duration)
    assert duration, "empty duration"
    assert match is not None, duration
    return int(match.group(1) or 0) * 60 + float(match.group(2) or 0)
