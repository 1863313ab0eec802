"""The config file: defaults, where it is found, and one-line errors naming file and key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ai_bottleneck.budget import BudgetOptions
from ai_bottleneck.config import (
    DEFAULT_PATH,
    DEFAULT_PORT,
    ENV_VAR,
    AgentOptions,
    Config,
    ConfigError,
    load_config,
    parse_listen,
)
from ai_bottleneck.probes.options import OptionError
from ai_bottleneck.thresholds import Thresholds

PROBES = ("download", "gpu", "host", "http", "iperf3", "nic", "oom")
REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load(path: Path) -> Config:
    return load_config(path, environ={}, known_probes=PROBES)


def error_of(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load(path)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"{path}: "), text
    return text


def test_empty_file_gives_every_default(tmp_path: Path) -> None:
    config = load(write(tmp_path, ""))
    assert config.agent == AgentOptions()
    assert config.thresholds == Thresholds()
    assert config.agent.listen_address == ("", DEFAULT_PORT)
    assert config.agent.record_file is None and config.agent.web_config_file is None
    assert config.enabled_probes == PROBES  # every installed probe, each decides if usable
    assert config.probe_options("http") == {}


def test_full_file_is_read(tmp_path: Path) -> None:
    path = write(tmp_path, """
[agent]
interval_seconds = "500ms"
window_seconds = "30s"
listen = "127.0.0.1:9999"
record_file = "/var/lib/ai-bottleneck/record.jsonl"
web_config_file = "/etc/ai-bottleneck/web-config.yml"
stale_after_intervals = 5

[thresholds]
gpu_low_utilization_ratio = "25%"
public_bandwidth_min_bits_per_second = "100mbit"

[probes.http]
targets = ["http://127.0.0.1:8000/v1/health"]
timeout_seconds = 5

[probes.iperf3]
enabled = false
peers = ["10.0.0.2"]
""")
    config = load(path)
    assert config.source == str(path)
    assert config.agent.interval_seconds == 0.5
    assert config.agent.window_seconds == 30
    assert config.agent.listen_address == ("127.0.0.1", 9999)
    assert config.agent.record_file == Path("/var/lib/ai-bottleneck/record.jsonl")
    assert config.agent.stale_after_intervals == 5
    assert config.thresholds.gpu_low_utilization_ratio == 0.25
    assert config.thresholds.public_bandwidth_min_bits_per_second == 100e6
    # Probe tables pass through untouched, minus `enabled`, which the config handles.
    assert config.probe_options("http") == {"targets": ["http://127.0.0.1:8000/v1/health"],
                                            "timeout_seconds": 5}
    assert config.probe_options("iperf3") == {"peers": ["10.0.0.2"]}
    assert "iperf3" not in config.enabled_probes
    assert "http" in config.enabled_probes
    assert config.required_probes == ()


def test_enabled_true_marks_a_probe_required(tmp_path: Path) -> None:
    config = load(write(tmp_path, "[probes.gpu]\nenabled = true\n"))
    assert config.required_probes == ("gpu",)
    assert config.probe_option_tables == {"gpu": {}}


def test_budget_table_is_parsed_when_the_budget_module_exists(tmp_path: Path) -> None:
    config = load(write(tmp_path, '[budget]\nbusy_nic_ratio = "40%"\n'))
    assert isinstance(config.budget, BudgetOptions)
    assert config.budget.busy_nic_ratio == 0.4
    text = error_of(write(tmp_path, "[budget]\nbusy_nic_ratio = 3\n"))
    assert "budget.busy_nic_ratio" in text


@pytest.mark.parametrize(("text", "key", "problem"), [
    ("[agent]\ninterval = 1\n", "agent.interval", "unknown key"),
    ("[agnet]\n", "agnet", "unknown key"),
    ("[thresholds]\nvram_high = 0.9\n", "thresholds.vram_high", "unknown key"),
    ("[probes.gpuu]\n", "probes.gpuu", "unknown probe"),
    ("[agent]\ninterval_seconds = true\n", "agent.interval_seconds", "expected a number"),
    ("[agent]\nlisten = 19466\n", "agent.listen", "expected a string"),
    ("[agent]\nstale_after_intervals = 2.5\n", "agent.stale_after_intervals",
     "expected an integer"),
    ("[probes.gpu]\nenabled = \"yes\"\n", "probes.gpu.enabled", "expected true or false"),
    ("agent = 3\n", "agent", "expected a table"),
    ("[probes]\nhttp = 1\n", "probes.http", "expected a table"),
    ("[agent]\ninterval_seconds = 0\n", "agent.interval_seconds", "must be >= 0.1"),
    ("[thresholds]\nvram_high_ratio = 1.5\n", "thresholds.vram_high_ratio", "must be <= 1"),
    ("[agent]\nwindow_seconds = \"ten\"\n", "agent.window_seconds", "not a duration"),
    ("[agent]\ninterval_seconds = 20\nwindow_seconds = 10\n", "agent",
     "window_seconds (10) is shorter than interval_seconds (20)"),
    ("[agent]\nlisten = \"localhost\"\n", "agent", "is not HOST:PORT"),
    ("[agent]\nlisten = \":70000\"\n", "agent", "port must be a number from 0 to 65535"),
    ("[agent]\nrecord_file = \"\"\n", "agent", "record_file: an empty path"),
])
def test_bad_values_name_file_key_and_problem(tmp_path: Path, text: str, key: str,
                                              problem: str) -> None:
    path = write(tmp_path, text)
    message = error_of(path)
    assert message.startswith(f"{path}: {key}: "), message
    assert problem in message


def test_bad_toml_names_file_and_position(tmp_path: Path) -> None:
    path = write(tmp_path, "[agent]\ninterval_seconds = = 1\n")
    message = error_of(path)
    assert "not valid TOML" in message and "line 2" in message


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b"[agent]\nlisten = \"\xff\"\n")
    assert "not UTF-8" in error_of(path)


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    assert error_of(path) == f"{path}: no such file"


def test_directory_is_an_error(tmp_path: Path) -> None:
    assert "is a directory" in error_of(tmp_path)


def test_environment_variable_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[agent]\nwindow_seconds = 20\n")
    config = load_config(None, environ={ENV_VAR: str(path)}, known_probes=PROBES)
    assert config.agent.window_seconds == 20
    # The flag wins over the variable.
    other = write(tmp_path, "[agent]\nwindow_seconds = 30\n", "other.toml")
    config = load_config(other, environ={ENV_VAR: str(path)}, known_probes=PROBES)
    assert config.agent.window_seconds == 30
    # A variable naming a missing file is as wrong as the flag naming one.
    with pytest.raises(ConfigError, match="no such file"):
        load_config(None, environ={ENV_VAR: str(tmp_path / "gone.toml")}, known_probes=PROBES)


def test_absent_default_file_means_defaults() -> None:
    if DEFAULT_PATH.exists():
        pytest.skip(f"{DEFAULT_PATH} exists on this machine")
    config = load_config(None, environ={}, known_probes=PROBES)
    assert config.agent == AgentOptions()
    assert str(DEFAULT_PATH) in config.source and "defaults" in config.source


def test_known_probes_default_to_the_installed_entry_points(tmp_path: Path) -> None:
    # The editable install declares the built-in probes in the entry-point group.
    config = load_config(write(tmp_path, "[probes.host]\n"), environ={})
    assert set(PROBES) <= set(config.known_probes)
    with pytest.raises(ConfigError, match=r"probes\.nosuch: unknown probe"):
        load_config(write(tmp_path, "[probes.nosuch]\n"), environ={})


def test_probe_option_errors_become_config_errors(tmp_path: Path) -> None:
    config = load(write(tmp_path, "[probes.http]\ntargets = 3\n"))
    error = config.error(OptionError("probes.http.targets", "expected a list, got 3"))
    assert str(error) == f"{tmp_path / 'config.toml'}: probes.http.targets: expected a list, got 3"


def test_command_line_overrides_are_checked(tmp_path: Path) -> None:
    config = load(write(tmp_path, ""))
    changed = config.with_agent("--listen", listen="127.0.0.1:0")
    assert changed.agent.listen_address == ("127.0.0.1", 0)
    assert config.agent.listen == AgentOptions().listen  # the original is unchanged
    with pytest.raises(ConfigError) as info:
        config.with_agent("--listen", listen="nonsense")
    assert str(info.value).startswith("--listen: agent: listen: ")


@pytest.mark.parametrize(("text", "expected"), [
    (":19466", ("", 19466)),
    ("0.0.0.0:80", ("0.0.0.0", 80)),
    ("[::1]:9", ("::1", 9)),
    ("localhost:0", ("localhost", 0)),
])
def test_parse_listen(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["19466", "::1:80", "[::1:80", "[nothex]:80", "host:port",
                                  "host:-1"])
def test_parse_listen_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(text)


def test_example_config_in_deploy_is_valid_and_documents_every_agent_key() -> None:
    example = REPO / "deploy" / "config.toml"
    config = load(example)
    text = example.read_text(encoding="utf-8")
    for f in dataclasses.fields(AgentOptions):
        assert f.name in text, f"deploy/config.toml does not mention agent.{f.name}"
    for f in dataclasses.fields(Thresholds):
        assert f.name in text, f"deploy/config.toml does not mention thresholds.{f.name}"
    assert config.agent.listen_address[1] == DEFAULT_PORT
