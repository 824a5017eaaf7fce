"""Configuration loading: TOML, environment overrides, every error reported at once."""

from __future__ import annotations

import os
from pathlib import Path
from typing import get_args

import pytest
from pydantic import BaseModel, ValidationError

from mssgate.config import Config, load_config
from mssgate.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mssgate.toml"
    path.write_text(text)
    return path


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("MSSGATE_"):
            monkeypatch.delenv(key)


def test_defaults_and_derived_paths(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, '[server]\ndata_dir = "data"\ndomain = "a.test"\n'))
    data = (tmp_path / "data").resolve()
    assert cfg.server.data_dir == data
    assert cfg.smtp.submission_port == 10587
    assert cfg.smtp.smtps_port == 10465
    assert cfg.smtp.mta_port == 10025
    assert cfg.smtp.max_message_size == 26_214_400
    assert (cfg.imap.port, cfg.imap.imaps_port, cfg.api.port) == (10143, 10993, 10443)
    assert cfg.database_url == f"sqlite:///{data}/mssgate.db"
    assert cfg.tls.cert == data / "certs" / "server.crt.pem"
    assert cfg.tls.ca == data / "certs" / "ca.crt.pem"
    assert cfg.dkim.key == data / "certs" / "dkim.key.pem"
    assert cfg.policy.require_signature is True


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "[smtp]\nsubmission_port = 2587\nmta_port = 2525\n")
    monkeypatch.setenv("MSSGATE_SMTP__SUBMISSION_PORT", "3587")
    monkeypatch.setenv("MSSGATE_POLICY__ENCRYPTION", "required")
    monkeypatch.setenv("MSSGATE_DATABASE__URL", "postgresql://u@h/db")
    cfg = load_config(path)
    assert cfg.smtp.submission_port == 3587  # env wins
    assert cfg.smtp.mta_port == 2525  # file kept where env is silent
    assert cfg.policy.encryption == "required"
    assert cfg.database_url == "postgresql://u@h/db"


def test_every_invalid_key_in_one_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(
        tmp_path,
        "[smtp]\nsubmission_port = 70000\nmax_message_size = -1\nbogus = 1\n"
        '[policy]\nencryption = "sometimes"\n[nosuchsection]\nx = 1\n',
    )
    monkeypatch.setenv("MSSGATE_IMAP__PORT", "not-a-port")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert str(path) in message
    for fragment in (
        "smtp.submission_port:",
        "smtp.max_message_size:",
        "smtp.bogus: unknown key",
        "policy.encryption:",
        "nosuchsection: unknown key",
        # The environment's value is named as the environment's, not blamed on the file.
        "invalid configuration in the environment: MSSGATE_IMAP__PORT (imap.port):",
    ):
        assert fragment in message
    assert "\n" not in message


def test_a_bad_value_from_the_environment_names_its_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "[smtp]\nsubmission_port = 2587\n")
    monkeypatch.setenv("MSSGATE_SMTP__SUBMISSION_PORT", "port")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(
        "invalid configuration in the environment: MSSGATE_SMTP__SUBMISSION_PORT"
        " (smtp.submission_port): "
    )
    assert str(path) not in message  # the file is fine


def test_config_is_immutable(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ""))
    with pytest.raises(ValidationError):
        cfg.smtp.submission_port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[smtp\n", "not valid TOML"),
        (b"\xff\xfe".decode("latin-1"), "not valid TOML"),
    ],
)
def test_unreadable_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_config_file_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, '[server]\ndomain = "env.test"\n')
    monkeypatch.setenv("MSSGATE_CONFIG", str(path))
    assert load_config().server.domain == "env.test"
    monkeypatch.delenv("MSSGATE_CONFIG")
    monkeypatch.chdir(tmp_path)
    assert load_config().server.domain == "env.test"  # ./mssgate.toml


def _section_model(name: str) -> type[BaseModel]:
    value = getattr(Config(), name)
    if value is not None:
        return type(value)
    # A section that is off unless present ([oidc]): its model is the annotation's other arm.
    arms = get_args(Config.model_fields[name].annotation)
    model: type[BaseModel] = next(a for a in arms if a is not type(None))
    return model


def test_model_has_a_field_for_each_documented_key() -> None:
    fields = {s: set(_section_model(s).model_fields) for s in Config.model_fields}
    assert {"hostname", "domain", "data_dir"} <= fields["server"]
    assert {"submission_port", "smtps_port", "mta_port", "max_message_size"} <= fields["smtp"]
    assert {"cert", "key", "ca"} <= fields["tls"]
    assert {"require_signature", "encryption"} <= fields["policy"]
    assert {"selector", "key"} <= fields["dkim"]


def test_init_refuses_to_overwrite(tmp_path: Path, cli: object) -> None:
    from tests.conftest import Cli

    assert isinstance(cli, Cli)
    data = tmp_path / "d"
    cli.ok("init", "--data", str(data), "--domain", "a.test", "--hostname", "mx1.a.test")
    text = (data / "mssgate.toml").read_text()
    assert 'hostname = "mx1.a.test"' in text
    again = cli("init", "--data", str(data), "--domain", "a.test")
    assert again.code == 1 and "exists already" in again.err
    assert (data / "mssgate.toml").read_text() == text
    cli.ok("init", "--data", str(data), "--domain", "a.test", "--force")
    assert oct((data / "certs" / "ca.key.pem").stat().st_mode & 0o777) == "0o600"
    assert oct(data.stat().st_mode & 0o777) == "0o700"


def test_check_passes_then_reports_a_broken_certificate(tmp_path: Path, cli: object) -> None:
    from mssgate.dovecot.paths import outside_mail_root, runtime_dir
    from tests.conftest import Cli

    assert isinstance(cli, Cli)
    data = tmp_path / "d"
    cli.ok("init", "--data", str(data), "--domain", "a.test")
    cfg = str(data / "mssgate.toml")
    report = cli.ok("--config", cfg, "check", "--json").json()
    assert report["ok"] is True
    assert {c["check"] for c in report["checks"]} >= {
        "configuration",
        "tls certificate",
        "database",
    }
    runtime = runtime_dir(data)
    # pytest's own tmp root is 0700: as root, Dovecot's mail user could not reach DATA/mail.
    mail = outside_mail_root(data) if os.geteuid() == 0 else data / "mail"
    (dovecot,) = [c for c in report["checks"] if c["check"] == "dovecot"]
    assert dovecot["detail"] == f"sockets in {runtime}, mail in {mail}"
    (data / "certs" / "server.crt.pem").write_text("garbage")
    (data / "certs" / "dkim.key.pem").chmod(0o644)
    broken = cli("--config", cfg, "check")
    assert broken.code == 1
    assert "FAIL tls certificate" in broken.out
    assert "readable by others" in broken.out
    assert "2 check(s) failed" in broken.err


def test_delivery_and_penalty_limits_follow_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import timedelta

    from mssgate.mailstore import LmtpStore
    from mssgate.smtp.limits import AuthPenalty
    from mssgate.spool.delivery import retry_delay

    defaults = Config()
    assert AuthPenalty.from_config(defaults.smtp).forget_after == 900
    assert retry_delay(20, defaults.delivery) == timedelta(hours=1)
    assert LmtpStore(tmp_path / "lmtp")._timeout == defaults.delivery.lmtp_timeout_seconds == 120
    monkeypatch.setenv("MSSGATE_SMTP__AUTH_FAILURE_FORGET_SECONDS", "60")
    monkeypatch.setenv("MSSGATE_DELIVERY__RETRY_FIRST_SECONDS", "7")
    monkeypatch.setenv("MSSGATE_DELIVERY__RETRY_MAX_SECONDS", "20")
    monkeypatch.setenv("MSSGATE_DELIVERY__MAX_ATTEMPTS", "2")
    monkeypatch.setenv("MSSGATE_DELIVERY__LMTP_TIMEOUT_SECONDS", "9")
    cfg = load_config(write(tmp_path, '[server]\ndata_dir = "data"\n'))
    penalty = AuthPenalty.from_config(cfg.smtp)
    assert (penalty.forget_after, penalty.free_failures, penalty.max_delay) == (60, 3, 15)
    assert [retry_delay(n, cfg.delivery).total_seconds() for n in range(3)] == [7, 14, 20]
    assert cfg.delivery.max_attempts == 2 and cfg.delivery.lmtp_timeout_seconds == 9


def _documented_keys() -> dict[tuple[str, str], str]:
    """(section, key) -> default cell of docs/operator-guide.md's configuration table."""
    guide = (Path(__file__).parent.parent / "docs" / "operator-guide.md").read_text()
    head = "| section | key | default | meaning |\n|---|---|---|---|\n"
    table = guide[guide.index(head) + len(head) :].split("\n\n", 1)[0]
    rows: dict[tuple[str, str], str] = {}
    for line in table.splitlines():
        section, keys, default, _ = (c.strip() for c in line.strip("|").split("|", 3))
        for key in keys.split(", "):  # "cert, key, ca": one row for related paths
            # Once: two rows for one key had drifted apart (5.0 and 5, two wordings).
            assert (section, key) not in rows, f"{section}.{key} documented twice"
            rows[(section, key)] = default
    return rows


def test_operator_guide_documents_every_field_with_its_default() -> None:
    documented = _documented_keys()
    fields = {
        (section, key): field.default
        for section, info in Config.model_fields.items()
        for key, field in _section_model(section).model_fields.items()
    }
    assert sorted(set(fields) - set(documented)) == [], "fields missing from the guide"
    assert sorted(set(documented) - set(fields)) == [], "documented keys that do not exist"
    for where, default in fields.items():
        if isinstance(default, bool):
            shown = str(default).lower()
        elif isinstance(default, int | float):
            shown = str(int(default)) if float(default).is_integer() else str(default)
        else:
            continue  # paths, lists and strings: worded for a reader
        assert documented[where].split()[0] == shown, where


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        # A list or table is given as JSON: the error's location goes below the variable.
        ("MSSGATE_QUEUE__FINAL_NACK_CODES", '[903, "x"]', "(queue.final_nack_codes.1)"),
        ("MSSGATE_DKIM__DNS_OVERRIDES", '{"a.test": 5}', "(dkim.dns_overrides.a.test)"),
        # A whole section as one JSON variable, which pydantic-settings also reads.
        ("MSSGATE_SMTP", '{"submission_port": "port"}', "(smtp.submission_port)"),
    ],
)
def test_a_bad_nested_value_from_the_environment_names_its_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, named: str
) -> None:
    path = write(tmp_path, "[smtp]\nsubmission_port = 2587\n")
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(f"invalid configuration in the environment: {variable} {named}: ")
    assert str(path) not in message  # the file is fine


def test_a_list_from_the_environment_that_is_not_json_names_its_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pydantic-settings raises its own SettingsError here, which reached the CLI as
    # "internal error (SettingsError)".
    path = write(tmp_path, "")
    monkeypatch.setenv("MSSGATE_SMTP__SUBMISSION_PORT", "2587")  # a fine one beside it
    monkeypatch.setenv("MSSGATE_QUEUE__FINAL_NACK_CODES", "903,904")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == (
        "invalid configuration in the environment: MSSGATE_QUEUE__FINAL_NACK_CODES"
        " (queue.final_nack_codes): a list or table is given as JSON, e.g. [1, 2] or"
        ' {"key": "value"}'
    )


def test_a_misspelt_section_in_the_environment_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pydantic-settings ignores a variable matching no section: `MSSGATE_SMPT__...` left the
    # port at the file's value without a word, while `[smpt]` in the file is refused.
    path = write(tmp_path, "[smtp]\nsubmission_port = 2587\n")
    monkeypatch.setenv("MSSGATE_SMPT__SUBMISSION_PORT", "3587")
    monkeypatch.setenv("MSSGATE_TEST_POSTGRES_URL", "postgresql://x")  # not a key: no __
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == (
        "invalid configuration in the environment: MSSGATE_SMPT__SUBMISSION_PORT (smpt):"
        " unknown section"
    )
