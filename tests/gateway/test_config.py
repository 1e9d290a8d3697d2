from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import load_settings
from gateway.errors import ConfigError, StoreError
from gateway.store import STORE_SCHEMES, open_store

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "protege.yaml"
    path.write_text(text)
    return path


def test_yaml_then_env_then_flags(tmp_path: Path) -> None:
    config = write(tmp_path, "port: 9000\nhost: 0.0.0.0\nstore: sqlite:///a.db\nlog_level: debug\n")
    settings = load_settings(config, env={"PROTEGE_PORT": "9100", "PROTEGE_STORE": "sqlite:///b.db"},
                             overrides={"store": "sqlite:///c.db", "host": None})
    assert settings.host == "0.0.0.0"  # yaml only
    assert settings.port == 9100  # env beats yaml
    assert settings.store == "sqlite:///c.db"  # flag beats env
    assert settings.log_level == "debug"


def test_teacher_flags_build_one_teacher(tmp_path: Path) -> None:
    config = write(tmp_path, "teachers:\n  - model: anthropic/claude-sonnet-4-5\n  - model: openai/gpt-4o\n")
    settings = load_settings(config, env={}, overrides={"teacher": "openai/gpt-4o-mini",
                                                         "teacher_api_base": "http://x/v1",
                                                         "teacher_api_key": "sk-1"})
    [teacher] = settings.teachers
    assert (teacher.model, teacher.api_base) == ("openai/gpt-4o-mini", "http://x/v1")
    assert teacher.served_name == "gpt-4o-mini"
    assert teacher.api_key is not None and teacher.api_key.get_secret_value() == "sk-1"
    assert "sk-1" not in repr(settings)


def test_teacher_key_patches_the_single_configured_teacher(tmp_path: Path) -> None:
    config = write(tmp_path, "teachers:\n  - model: openai/gpt-4o\n    aliases: [big]\n")
    settings = load_settings(config, env={"PROTEGE_TEACHER_API_KEY": "sk-env"})
    assert settings.teachers[0].aliases == ["big"]
    assert settings.teachers[0].api_key is not None


def test_env_gateway_keys_are_split() -> None:
    settings = load_settings(env={"PROTEGE_GATEWAY_KEYS": "a, b,,c"})
    assert [k.get_secret_value() for k in settings.gateway_keys] == ["a", "b", "c"]


@pytest.mark.parametrize(("text", "names"), [
    ("prot: 80\n", "prot"),
    ("port: many\n", "port"),
    ("teachers:\n  - api_base: http://x\n", "teachers.0.model"),
    ("capture:\n  batch_size: 0\n", "capture.batch_size"),
    ("store: mysql://x\n", "store"),
    ("- just\n- a list\n", "mapping"),
    ("port: [unclosed\n", "not valid YAML"),
])
def test_bad_config_names_the_key(tmp_path: Path, text: str, names: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, text), env={})
    assert names in str(err.value) and (str(tmp_path) in str(err.value) or names == "not valid YAML")


def test_missing_config_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "nope.yaml", env={})


@pytest.mark.parametrize("prefix", list(STORE_SCHEMES))
def test_settings_accept_every_store_scheme_open_store_serves(prefix: str) -> None:
    url = prefix + ("data/p.db" if prefix.startswith("sqlite") else "u@h/db")
    assert load_settings(env={"PROTEGE_STORE": url}).store == url
    assert open_store(url).url == url


def test_settings_refuse_a_store_url_as_open_store_does() -> None:
    with pytest.raises(StoreError) as refused:
        open_store("mysql://x")
    with pytest.raises(ConfigError, match="store") as err:
        load_settings(env={"PROTEGE_STORE": "mysql://x"})
    assert str(refused.value) in str(err.value)


def test_checking_the_store_url_imports_no_backend() -> None:
    code = ("import sys; from gateway.config import load_settings; "
            "load_settings(env={'PROTEGE_STORE': 'postgresql://u@h/db'}); load_settings(env={}); "
            "backends = {'gateway.store.sqlite', 'gateway.store.postgres', 'aiosqlite', 'asyncpg'}; "
            "print(sorted(backends & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO, timeout=60)
    assert out.stdout.strip() == "[]"
