"""docker-compose.yml cannot run here (no Docker engine), so check it against `hean up`'s table."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from hean.affinity import DEFAULT_NICE, for_process, parse_nice, pinned_argv
from hean.processes import PROCESSES
from hean.redis_server import AOF_REWRITE_MIN_SIZE
from support import REPO_ROOT


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())


def test_compose_runs_exactly_the_processes_hean_up_runs(compose: dict[str, Any]) -> None:
    """The same commands, at HEAN_NICE's default priorities (a negative niceness needs SYS_NICE
    in a container; SCHED_IDLE needs nothing)."""
    services = compose["services"]
    assert set(services) == {spec.name for spec in PROCESSES} | {"redis"}
    nice = parse_nice(DEFAULT_NICE)
    for spec in PROCESSES:
        command = ["python", "-m", spec.module, *spec.args]
        expected = pinned_argv("python", spec.name, command, {}, nice)
        assert services[spec.name]["command"] == expected, spec.name
        niceness = for_process(spec.name, nice)
        raised = isinstance(niceness, int) and niceness < 0
        assert ("SYS_NICE" in services[spec.name].get("cap_add", [])) == raised, spec.name
    assert services["history"]["command"][:5] == ["python", "-m", "hean.affinity", "--nice", "idle"]


def test_redis_service_is_persistent_and_health_checked(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    assert redis["image"].startswith("redis:7") and "alpine" in redis["image"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    # rewrites as rare as the private server's
    assert command[command.index("--auto-aof-rewrite-min-size") + 1] == AOF_REWRITE_MIN_SIZE
    # every write on disk before its reply, as the private server (hean.redis_client.Durability)
    assert command[command.index("--appendfsync") + 1] == "always"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    # a limit of its own (Redis's default is none): full, it refuses rather than be killed
    assert command[command.index("--maxmemory") + 1] == "${REDIS_MAXMEMORY:-4gb}"
    volume = redis["volumes"][0].split(":")
    assert volume[1] == "/data" and volume[0] in compose["volumes"]
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def test_every_hean_service_waits_for_healthy_redis_and_shares_one_image(
    compose: dict[str, Any],
) -> None:
    for spec in PROCESSES:
        service = compose["services"][spec.name]
        assert service["depends_on"]["redis"]["condition"] == "service_healthy", spec.name
        assert service["build"] == "." and service["image"] == "hean:latest", spec.name
        assert service["environment"]["REDIS_URL"] == "redis://redis:6379/0", spec.name
    assert (REPO_ROOT / "Dockerfile").is_file()


def test_published_ports_stay_on_loopback(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_the_image_installs_the_package_the_way_make_does() -> None:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert "--no-build-isolation -e ." in dockerfile and "--no-build-isolation -e" in makefile


def test_the_console_is_published_and_the_token_comes_from_the_environment(compose: dict[str, Any]) -> None:
    web = compose["services"]["web"]
    assert web["ports"] == ["127.0.0.1:8000:8000"] and web["environment"]["HEAN_HOST"] == "0.0.0.0"
    for spec in PROCESSES:
        assert compose["services"][spec.name]["environment"]["HEAN_API_TOKEN"].startswith("${HEAN_API_TOKEN")


def test_every_hean_service_writes_its_metrics_to_one_shared_in_memory_volume(
    compose: dict[str, Any],
) -> None:
    for spec in PROCESSES:
        service = compose["services"][spec.name]
        assert service["environment"]["PROMETHEUS_MULTIPROC_DIR"] == "/metrics", spec.name
        assert "hean-metrics:/metrics" in service["volumes"], spec.name
    assert compose["volumes"]["hean-metrics"]["driver_opts"]["type"] == "tmpfs"
