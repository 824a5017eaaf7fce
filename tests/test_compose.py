"""compose.yaml and the Dockerfile, checked without a Docker engine: every MSSGATE_* variable
is a real configuration key with a valid value, ports line up, healthchecks exist, and the
image installs what CI installs."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mssgate.config import CONFIG_ENV, Config, config_from_mapping
from mssgate.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "compose.yaml"
DOCKERFILE = REPO / "Dockerfile"
CI_RUN = REPO / ".ci" / "run"
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"

# What an operator would put in .env; the interpolation below fills compose's ${...}.
# Packages .ci/run installs for the tests alone, not for the gateway: the stock clients the
# tests drive (mbsync, NeoMutt, swaks, curl, jq of the README tour) and the admin console's
# browser. The image leaves them out.
TEST_ONLY_PACKAGES = frozenset({"isync", "neomutt", "swaks", "curl", "jq", "chromium"})

DOTENV = {
    "MSSGATE_DOMAIN": "hopital-a.test",
    "MSSGATE_HOSTNAME": "mx.hopital-a.test",
    "POSTGRES_PASSWORD": "s3cret",
}
_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: str, env: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        if env.get(name):
            return env[name]
        if op in (":-", "-"):
            return arg
        raise AssertionError(f"compose needs {name}: {arg}")

    return _VAR.sub(one, value)


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def gateway_env(service: str = "gateway") -> dict[str, str]:
    env = compose()["services"][service]["environment"]
    assert isinstance(env, dict), "environment as a mapping keeps each key checkable"
    return {k: interpolate(str(v), DOTENV) for k, v in env.items()}


def dockerfile_lines() -> list[str]:
    # Join continuation lines so that each instruction is one line.
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for line in dockerfile_lines():
        if line.startswith("ENV "):
            for pair in shlex.split(line[4:]):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def exposed() -> set[int]:
    ports: set[int] = set()
    for line in dockerfile_lines():
        if line.startswith("EXPOSE "):
            ports |= {int(p.split("/")[0]) for p in line.split()[1:]}
    return ports


def config_keys(env: dict[str, str]) -> list[tuple[str, str]]:
    keys = []
    for name in env:
        if not name.startswith("MSSGATE_") or name == CONFIG_ENV:
            continue
        section, sep, key = name.removeprefix("MSSGATE_").lower().partition("__")
        assert sep, f"{name}: expected MSSGATE_<SECTION>__<KEY>"
        keys.append((section, key))
    return keys


def build_config(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Config:
    for name in list(os.environ):
        if name.startswith("MSSGATE_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return config_from_mapping({}, origin="compose.yaml")


@pytest.mark.parametrize("source", ["compose", "dockerfile"])
def test_every_mssgate_variable_is_a_config_key(source: str) -> None:
    env = gateway_env() if source == "compose" else dockerfile_env()
    keys = config_keys(env)
    assert keys, "no MSSGATE_* variable found"
    for section, key in keys:
        assert section in Config.model_fields, f"MSSGATE_{section.upper()}: no such section"
        model = Config.model_fields[section].annotation
        assert model is not None and key in model.model_fields, f"[{section}] has no key {key}"


@pytest.mark.parametrize("source", ["compose", "dockerfile"])
def test_the_environment_builds_a_valid_config(
    source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = gateway_env() if source == "compose" else dockerfile_env()
    config = build_config(env, monkeypatch)
    assert config.server.data_dir == Path("/var/lib/mssgate")
    assert Path(env[CONFIG_ENV]) == config.server.data_dir / "mssgate.toml"
    assert (config.smtp.mta_port, config.smtp.smtps_port, config.smtp.submission_port) == (
        25,
        465,
        587,
    )
    assert (config.imap.imaps_port, config.api.port) == (993, 443)
    # Inside the container every interface is the one the port mapping reaches.
    assert {config.smtp.bind, config.imap.bind, config.api.bind} == {"0.0.0.0"}  # noqa: S104
    if source == "compose":
        assert config.database_url.startswith("postgresql://mssgate:s3cret@db:5432/")
        assert config.server.domain == "hopital-a.test"


def test_a_wrong_value_would_be_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    # The check above has teeth: the same path refuses a bad port and an unknown key.
    env = gateway_env() | {"MSSGATE_SMTP__MTA_PORT": "99999"}
    with pytest.raises(ConfigError, match="mta_port"):
        build_config(env, monkeypatch)
    assert ("smtp", "mta_prot") in config_keys({"MSSGATE_SMTP__MTA_PROT": "25"})


def test_published_ports_are_the_configured_and_exposed_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gateway = compose()["services"]["gateway"]
    mapped = {}
    for entry in gateway["ports"]:
        host, _, container = str(entry).rpartition(":")
        mapped[int(host)] = int(container)
    assert set(mapped) == {25, 465, 587, 993, 443}
    config = build_config(gateway_env(), monkeypatch)
    listening = {
        config.smtp.mta_port,
        config.smtp.smtps_port,
        config.smtp.submission_port,
        config.imap.imaps_port,
        config.api.port,
    }
    assert set(mapped.values()) == listening
    assert set(mapped.values()) <= exposed()
    image = build_config(dockerfile_env(), monkeypatch)
    assert exposed() == listening | {image.imap.port}


def test_services_have_healthchecks_and_postgres() -> None:
    services = compose()["services"]
    assert set(services) == {"gateway", "gateway-b", "db"}
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check and check.get("test"), f"{name} has no healthcheck"
    assert services["db"]["image"] == "postgres:15"
    assert services["gateway"]["depends_on"]["db"]["condition"] == "service_healthy"
    assert "mssgate-healthcheck" in " ".join(services["gateway"]["healthcheck"]["test"])
    assert any(line.startswith("HEALTHCHECK ") for line in dockerfile_lines())


def test_data_and_certs_live_on_volumes(monkeypatch: pytest.MonkeyPatch) -> None:
    config = build_config(gateway_env(), monkeypatch)
    mounts = {}
    for entry in compose()["services"]["gateway"]["volumes"]:
        source, _, target = str(entry).partition(":")
        mounts[Path(target.split(":")[0])] = source
    assert config.server.data_dir in mounts
    assert config.certs_dir in mounts
    declared = set(compose()["volumes"])
    assert {mounts[config.server.data_dir], mounts[config.certs_dir]} <= declared


def test_image_is_slim_python_non_root_and_serves() -> None:
    lines = dockerfile_lines()
    assert lines[0] == "FROM python:3.11-slim"
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert 'CMD ["serve"]' in lines
    assert any(line.startswith("ENTRYPOINT ") and "mssgate-entrypoint" in line for line in lines)
    assert 'exec mssgate "$@"' in ENTRYPOINT.read_text(encoding="utf-8")
    assert any("pip install" in line and " ." in line for line in lines)
    subprocess.run(["sh", "-n", str(ENTRYPOINT)], check=True)


def _apt_installed() -> set[str]:
    packages: set[str] = set()
    for line in dockerfile_lines():
        for match in re.finditer(r"apt-get install ([^&;]*)", line):
            packages |= {w for w in match[1].split() if not w.startswith("-")}
    return packages


def test_image_installs_what_ci_installs() -> None:
    ci = CI_RUN.read_text(encoding="utf-8")
    lists = re.findall(r"for pkg in ([^;]+); do", ci)
    assert lists, ".ci/run no longer lists its Debian packages as this test expects"
    wanted = {p for found in lists for p in found.split()} - TEST_ONLY_PACKAGES
    installed = _apt_installed()
    assert wanted <= installed, f"the image lacks {sorted(wanted - installed)}"
    assert {"dovecot-imapd", "dovecot-lmtpd", "gnupg", "openssl"} <= installed


def test_the_two_node_profile_adds_a_second_gateway_on_the_same_database(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    services = compose()["services"]
    first, second = services["gateway"], services["gateway-b"]
    assert "profiles" not in first and second["profiles"] == ["two-nodes"]
    assert second["image"] == first["image"]
    assert second["depends_on"]["gateway"]["condition"] == "service_healthy"
    env_a, env_b = gateway_env(), gateway_env("gateway-b")
    a, b = build_config(env_a, monkeypatch), build_config(env_b, monkeypatch)
    assert a.database_url == b.database_url and a.database_url.startswith("postgresql://")
    # The first keeps the name init wrote in its folder (an existing one must not be renamed).
    assert "MSSGATE_NODE__NAME" not in env_a and b.node.name == "b"
    # Each announces its compose service name, where the other reaches its node listener.
    for service, config in (("gateway", a), ("gateway-b", b)):
        assert config.node.bind == "0.0.0.0"  # noqa: S104 (the compose network)
        assert config.node.announced_address == f"{service}:{config.node.port}"
    mounts = {}
    for entry in second["volumes"]:
        source, target, *mode = str(entry).split(":")
        mounts[Path(target)] = (source, mode)
    # Its own data volume (certificates inside: `node add` writes them there); the first
    # node's volumes read-only, for `node add` to read the first node's configuration.
    assert mounts[b.server.data_dir] == ("mssgate-b-data", [])
    assert b.certs_dir.is_relative_to(b.server.data_dir)
    assert mounts[a.server.data_dir] == ("mssgate-data", ["ro"])
    assert mounts[a.certs_dir] == ("mssgate-certs", ["ro"])
    assert Path(env_b["NODE_ADD_FROM"]) == a.server.data_dir / "mssgate.toml"
    assert "mssgate-b-data" in compose()["volumes"]
    # The image makes the second data folder, owned by the unprivileged user.
    assert any(str(b.server.data_dir) in line and "chown" in line for line in dockerfile_lines())


@pytest.mark.postgres
def test_the_entrypoint_adds_the_second_node_with_node_add(tmp_path: Path, pg_schema: str) -> None:
    """The entrypoint run as compose runs it, for each node, on one PostgreSQL schema. Before,
    the second container ran `init`, which refuses a database that has a node already."""
    from tests.conftest import PG_URL

    assert PG_URL
    url = f"{PG_URL}?options=-csearch_path%3D{pg_schema}"
    base = {k: v for k, v in os.environ.items() if not k.startswith("MSSGATE_")}
    base["PATH"] = f"{Path(sys.executable).parent}:{base.get('PATH', '')}"
    base |= {
        "MSSGATE_SERVER__DOMAIN": "hopital-a.test",
        "MSSGATE_SERVER__HOSTNAME": "mx.hopital-a.test",
        "MSSGATE_DATABASE__URL": url,
        "MSSGATE_NODE__PORT": "10024",
    }

    def entrypoint(node: str, data: Path, *args: str, **env: str) -> str:
        done = subprocess.run(
            ["sh", str(ENTRYPOINT), *args],
            env={**base, "MSSGATE_CONFIG": str(data / "mssgate.toml"),
                 "MSSGATE_SERVER__DATA_DIR": str(data), "MSSGATE_NODE__NAME": node,
                 "MSSGATE_NODE__ADDRESS": f"gateway-{node}:10024", **env},
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout[done.stdout.find("\n[") + 1 :]  # the JSON after `node add`'s lines

    a, b = tmp_path / "a", tmp_path / "b"
    entrypoint("a", a, "node", "list", "--json")
    listed = entrypoint("b", b, "node", "list", "--json", NODE_ADD_FROM=str(a / "mssgate.toml"))
    nodes = {n["name"]: n["address"] for n in json.loads(listed)}
    assert nodes == {"a": "gateway-a:10024", "b": "gateway-b:10024"}
    for name in ("ca.crt.pem", "server.crt.pem", "dkim.key.pem"):
        assert (b / "certs" / name).read_bytes() == (a / "certs" / name).read_bytes()
    # Started again, the entrypoint finds its configuration and adds nothing.
    again = entrypoint("b", b, "node", "list", "--json", NODE_ADD_FROM=str(a / "mssgate.toml"))
    assert len(json.loads(again)) == 2
