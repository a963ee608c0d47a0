"""Unit tests of HubConfig: defaults, validation, options, and loading (no Ray)."""

from __future__ import annotations

import dataclasses
import math
import os
import re
from datetime import timedelta
from pathlib import Path

import pytest

import duraray as dr
from duraray.config import CONFIG_ENV, DEFAULT_DATA_DIR, HubConfig

EXAMPLE_TOML = Path(__file__).resolve().parents[1] / "cluster_config" / "duraray.toml"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch):
    """Run every test without DURARAY_* variables from the surrounding environment."""
    for name in list(os.environ):
        if name.startswith("DURARAY_"):
            monkeypatch.delenv(name)


def _write(tmp_path: Path, text: str, name: str = "hub.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- defaults -------------------------------------------------------------------------------


def test_defaults():
    """A bare HubConfig has the documented defaults."""
    expected = {
        "partitions": 4,
        "data_dir": "./.duraray",
        "fsync": True,
        "max_map_size": 1 << 40,
        "max_batch_items": 5000,
        "max_cached_orchestrations": 20000,
        "max_cached_entities": 100000,
        "version": None,
        "version_match": "none",
        "version_failure": "fail",
        "http_token": None,
        "maximum_timer_interval": None,
        "max_payload_bytes": 16 * 1024 * 1024,
        "resend_interval": 5.0,
        "request_dedup_seconds": 3600.0,
        "max_activities_in_flight": 10000,
        "activity_threads": 8,
        "activity_workers": None,
        "worker_concurrency": 4,
        "activity_pool_idle_s": 30.0,
        "inline_activities": True,
        "inline_activity_max_ms": 0.5,
        "determinism_warnings": None,
        "peer_links": True,
        "placement": "local",
        "log_format": "auto",
        "blocking_episode_warning_s": 2.0,
        "otel_setup": None,
    }
    actual = dataclasses.asdict(HubConfig())
    assert expected == actual


def test_default_data_dir_constant():
    """DEFAULT_DATA_DIR is the default of the data_dir field."""
    expected = DEFAULT_DATA_DIR
    actual = HubConfig().data_dir
    assert expected == actual


def test_load_without_file_or_environment_gives_defaults():
    """load() with an empty environment and no file equals the defaults."""
    expected = HubConfig()
    actual = HubConfig.load(environ={})
    assert expected == actual


def test_config_is_frozen():
    """A HubConfig cannot be mutated in place."""
    config = HubConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.partitions = 8  # type: ignore[misc]


# -- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"partitions": 0}, "partitions must be an integer between 1 and 1024"),
        ({"partitions": 1025}, "partitions must be an integer between 1 and 1024"),
        ({"partitions": -3}, "partitions must be an integer between 1 and 1024"),
        ({"partitions": 2.0}, "partitions must be an integer between 1 and 1024"),
        ({"partitions": "4"}, "partitions must be an integer between 1 and 1024"),
        ({"partitions": True}, "partitions must be an integer between 1 and 1024"),
        ({"max_batch_items": 0}, "max_batch_items must be >= 1"),
        ({"max_cached_orchestrations": -1}, "max_cached_orchestrations must be >= 0"),
        ({"max_cached_entities": -1}, "max_cached_entities must be >= 0"),
        ({"maximum_timer_interval": timedelta(0)}, "maximum_timer_interval must be positive"),
        (
            {"maximum_timer_interval": timedelta(seconds=-1)},
            "maximum_timer_interval must be positive",
        ),
        ({"maximum_timer_interval": 0}, "maximum_timer_interval must be positive"),
        ({"max_payload_bytes": 1023}, "max_payload_bytes must be at least 1024"),
        ({"resend_interval": 0}, "resend_interval must be positive"),
        ({"resend_interval": -0.5}, "resend_interval must be positive"),
        ({"resend_interval": math.nan}, "resend_interval must be positive"),
        ({"activity_threads": 0}, "activity_threads must be >= 1"),
        ({"activity_workers": 0}, "activity_workers must be >= 1"),
        ({"worker_concurrency": 0}, "worker_concurrency must be >= 1"),
        ({"activity_pool_idle_s": 0}, "activity_pool_idle_s must be a positive"),
        ({"activity_pool_idle_s": float("nan")}, "activity_pool_idle_s must be a positive"),
        ({"log_format": "xml"}, "log_format must be 'auto', 'console' or 'json'"),
        ({"determinism_warnings": "yes"}, "determinism_warnings must be true, false or None"),
        ({"determinism_warnings": 1}, "determinism_warnings must be true, false or None"),
        ({"placement": "everywhere"}, "placement must be 'local' or 'spread'"),
        ({"request_dedup_seconds": 0}, "request_dedup_seconds must be positive"),
        ({"request_dedup_seconds": math.inf}, "request_dedup_seconds must be positive"),
        ({"request_dedup_seconds": math.nan}, "request_dedup_seconds must be positive"),
        ({"max_activities_in_flight": 0}, "max_activities_in_flight must be an integer >= 1"),
        ({"max_activities_in_flight": 1.5}, "max_activities_in_flight must be an integer >= 1"),
        ({"request_dedup_seconds": 1e10}, "request_dedup_seconds must be positive"),
        ({"max_map_size": (1 << 20) - 1}, "max_map_size must be an integer of at least"),
        ({"max_map_size": 0}, "max_map_size must be an integer of at least"),
        ({"max_map_size": 2.0**30}, "max_map_size must be an integer of at least"),
        ({"max_map_size": True}, "max_map_size must be an integer of at least"),
        ({"max_map_size": "1GiB"}, "max_map_size must be an integer of at least"),
        ({"blocking_episode_warning_s": -1}, "blocking_episode_warning_s must be None or"),
        ({"blocking_episode_warning_s": math.nan}, "blocking_episode_warning_s must be None"),
        ({"blocking_episode_warning_s": "2"}, "blocking_episode_warning_s must be None or"),
        ({"otel_setup": "telemetry"}, "otel_setup must be None or 'module:function'"),
        ({"otel_setup": "telemetry:"}, "otel_setup must be None or 'module:function'"),
        ({"otel_setup": "a b:setup"}, "otel_setup must be None or 'module:function'"),
        ({"otel_setup": print}, "otel_setup must be None or 'module:function'"),
    ],
)
def test_invalid_value_raises(options, message):
    """Each out-of-range value raises ValueError with a message naming the option."""
    with pytest.raises(ValueError, match=re.escape(message)):
        HubConfig(**options)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"partitions": 0}, "partitions must be"),
        ({"log_format": "yaml"}, "log_format must be"),
        ({"resend_interval": 0.0}, "resend_interval must be positive"),
    ],
)
def test_with_options_validates(options, message):
    """with_options runs the same validation as the constructor."""
    with pytest.raises(ValueError, match=message):
        HubConfig().with_options(**options)


@pytest.mark.parametrize(
    "options",
    [
        {"partitions": 1},
        {"partitions": 1024},
        {"max_batch_items": 1},
        {"max_cached_orchestrations": 0},
        {"maximum_timer_interval": timedelta(microseconds=1)},
        {"max_payload_bytes": 1024},
        {"resend_interval": 0.001},
        {"activity_threads": 1},
        {"activity_workers": 1},
        {"worker_concurrency": 1},
        {"log_format": "json"},
        {"fsync": False},
        {"max_map_size": 1 << 20},
        {"blocking_episode_warning_s": 0},
        {"blocking_episode_warning_s": None},
        {"blocking_episode_warning_s": 0.001},
        {"otel_setup": "telemetry:setup"},
        {"otel_setup": "my_app.telemetry:Setup.install"},
    ],
)
def test_boundary_values_are_accepted(options):
    """The smallest (or largest) allowed value of each option is accepted as given."""
    config = HubConfig(**options)
    expected = options
    actual = {name: getattr(config, name) for name in options}
    assert expected == actual


# -- with_options ---------------------------------------------------------------------------


def test_with_options_rejects_unknown_names():
    """with_options raises TypeError listing the unknown option names, sorted."""
    with pytest.raises(TypeError, match=r"unknown hub option\(s\): bogus, partition$"):
        HubConfig().with_options(partition=8, bogus=1)


def test_with_options_returns_a_changed_copy():
    """with_options returns a new config and leaves the original unchanged."""
    original = HubConfig()
    changed = original.with_options(partitions=8, fsync=False)
    expected = (4, True, 8, False)
    actual = (original.partitions, original.fsync, changed.partitions, changed.fsync)
    assert expected == actual


def test_with_options_without_arguments_is_equal():
    """with_options() with nothing to change gives an equal config."""
    config = HubConfig(partitions=2)
    expected = config
    actual = config.with_options()
    assert expected == actual


@pytest.mark.parametrize("seconds", [90, 2.5])
def test_maximum_timer_interval_in_seconds(seconds):
    """A number of seconds for maximum_timer_interval becomes a timedelta, however given."""
    expected = timedelta(seconds=seconds)
    actual = (
        HubConfig(maximum_timer_interval=seconds).maximum_timer_interval,
        HubConfig().with_options(maximum_timer_interval=seconds).maximum_timer_interval,
        HubConfig.load(environ={}, maximum_timer_interval=seconds).maximum_timer_interval,
    )
    assert (expected, expected, expected) == actual


# -- load(): TOML files ---------------------------------------------------------------------


def test_load_top_level_toml(tmp_path):
    """Keys at the top level of the TOML file are read as options."""
    path = _write(
        tmp_path,
        'partitions = 8\nfsync = false\nlog_format = "json"\nresend_interval = 1.5\n',
    )
    expected = HubConfig(partitions=8, fsync=False, log_format="json", resend_interval=1.5)
    actual = HubConfig.load(path, environ={})
    assert expected == actual


def test_load_duraray_table(tmp_path):
    """Keys under a [duraray] table are read as options."""
    path = _write(tmp_path, '[duraray]\npartitions = 2\ndata_dir = "/data/duraray"\n')
    expected = HubConfig(partitions=2, data_dir="/data/duraray")
    actual = HubConfig.load(path, environ={})
    assert expected == actual


def test_load_duraray_table_ignores_other_tables(tmp_path):
    """With a [duraray] table present, other tables in the file are ignored."""
    path = _write(tmp_path, "[other]\nanything = 1\n\n[duraray]\nmax_batch_items = 10\n")
    expected = HubConfig(max_batch_items=10)
    actual = HubConfig.load(path, environ={})
    assert expected == actual


def test_load_accepts_a_str_path(tmp_path):
    """load() takes the file as a str as well as a Path."""
    path = _write(tmp_path, "activity_threads = 2\n")
    expected = HubConfig(activity_threads=2)
    actual = HubConfig.load(str(path), environ={})
    assert expected == actual


def test_load_timer_interval_from_toml_seconds(tmp_path):
    """maximum_timer_interval in the file is a number of seconds."""
    path = _write(tmp_path, "[duraray]\nmaximum_timer_interval = 86400\n")
    expected = timedelta(days=1)
    actual = HubConfig.load(path, environ={}).maximum_timer_interval
    assert expected == actual


def test_load_duraray_key_that_is_not_a_table(tmp_path):
    """A top-level 'duraray' key that is not a table raises ValueError."""
    path = _write(tmp_path, "duraray = 5\n")
    with pytest.raises(ValueError, match=r"\[duraray\] must be a table"):
        HubConfig.load(path, environ={})


def test_load_unknown_key_in_file(tmp_path):
    """An unknown key in the file raises TypeError naming it."""
    path = _write(tmp_path, "[duraray]\npartitions = 2\nshards = 3\n")
    with pytest.raises(TypeError, match=r"unknown hub option\(s\): shards$"):
        HubConfig.load(path, environ={})


def test_load_invalid_value_in_file(tmp_path):
    """An out-of-range value in the file fails validation."""
    path = _write(tmp_path, "[duraray]\npartitions = 0\n")
    with pytest.raises(ValueError, match="partitions must be"):
        HubConfig.load(path, environ={})


def test_load_missing_file(tmp_path):
    """A path to a file that does not exist raises FileNotFoundError."""
    with pytest.raises(FileNotFoundError):
        HubConfig.load(tmp_path / "missing.toml", environ={})


# -- load(): DURARAY_* environment variables -------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("1", True),
        ("true", True),
        ("True", True),
        ("YES", True),
        ("on", True),
        (" true ", True),
        ("0", False),
        ("false", False),
        ("No", False),
        ("OFF", False),
    ],
)
def test_env_bool(raw, value):
    """DURARAY_FSYNC accepts 1/0, true/false, yes/no and on/off in any case."""
    expected = value
    actual = HubConfig.load(environ={"DURARAY_FSYNC": raw}).fsync
    assert expected == actual


@pytest.mark.parametrize(
    ("name", "raw", "field", "value"),
    [
        ("DURARAY_PARTITIONS", "16", "partitions", 16),
        ("DURARAY_PARTITIONS", " 2 ", "partitions", 2),
        ("DURARAY_MAX_BATCH_ITEMS", "100", "max_batch_items", 100),
        ("DURARAY_MAX_CACHED_ORCHESTRATIONS", "0", "max_cached_orchestrations", 0),
        ("DURARAY_MAX_PAYLOAD_BYTES", "2048", "max_payload_bytes", 2048),
        ("DURARAY_ACTIVITY_THREADS", "3", "activity_threads", 3),
        ("DURARAY_ACTIVITY_WORKERS", "12", "activity_workers", 12),
        ("DURARAY_WORKER_CONCURRENCY", "7", "worker_concurrency", 7),
        ("DURARAY_RESEND_INTERVAL", "0.25", "resend_interval", 0.25),
        ("DURARAY_RESEND_INTERVAL", "3", "resend_interval", 3.0),
        ("DURARAY_MAXIMUM_TIMER_INTERVAL", "90", "maximum_timer_interval", timedelta(seconds=90)),
        ("DURARAY_MAXIMUM_TIMER_INTERVAL", "0.5", "maximum_timer_interval", timedelta(seconds=0.5)),
        ("DURARAY_DATA_DIR", "/data/duraray", "data_dir", "/data/duraray"),
        ("DURARAY_LOG_FORMAT", "json", "log_format", "json"),
        ("DURARAY_DETERMINISM_WARNINGS", "off", "determinism_warnings", False),
        ("DURARAY_DETERMINISM_WARNINGS", "true", "determinism_warnings", True),
    ],
)
def test_env_values(name, raw, field, value):
    """Each DURARAY_<FIELD> variable is parsed by the field's type."""
    expected = value
    actual = getattr(HubConfig.load(environ={name: raw}), field)
    assert expected == actual


@pytest.mark.parametrize("raw", ["", "none", "None", "NULL", " null "])
@pytest.mark.parametrize(
    ("name", "field"),
    [
        ("DURARAY_ACTIVITY_WORKERS", "activity_workers"),
        ("DURARAY_MAXIMUM_TIMER_INTERVAL", "maximum_timer_interval"),
        ("DURARAY_DETERMINISM_WARNINGS", "determinism_warnings"),
    ],
)
def test_env_none(name, field, raw, tmp_path):
    """An empty, 'none' or 'null' variable resets an optional field to None, over the file."""
    path = _write(
        tmp_path,
        "activity_workers = 4\nmaximum_timer_interval = 60\ndeterminism_warnings = false\n",
    )
    expected = None
    actual = getattr(HubConfig.load(path, environ={name: raw}), field)
    assert expected == actual


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("DURARAY_PARTITIONS", "four"),
        ("DURARAY_PARTITIONS", "2.5"),
        ("DURARAY_PARTITIONS", ""),
        ("DURARAY_PARTITIONS", "none"),
        ("DURARAY_FSYNC", "maybe"),
        ("DURARAY_FSYNC", ""),
        ("DURARAY_RESEND_INTERVAL", "soon"),
        ("DURARAY_ACTIVITY_WORKERS", "lots"),
        ("DURARAY_MAXIMUM_TIMER_INTERVAL", "1h"),
        ("DURARAY_MAX_PAYLOAD_BYTES", "16MiB"),
    ],
)
def test_env_bad_value_names_the_variable(name, raw):
    """A value that cannot be parsed raises ValueError naming the variable and the value."""
    with pytest.raises(ValueError, match=re.escape(f"{name}={raw!r}")):
        HubConfig.load(environ={name: raw})


def test_env_value_out_of_range_fails_validation():
    """A parsable but invalid variable value fails the config's validation."""
    with pytest.raises(ValueError, match="partitions must be"):
        HubConfig.load(environ={"DURARAY_PARTITIONS": "0"})


def test_env_unrelated_variables_are_ignored():
    """DURARAY_* variables that name no option are ignored."""
    expected = HubConfig()
    actual = HubConfig.load(environ={"DURARAY_SOMETHING_ELSE": "x", "PARTITIONS": "9"})
    assert expected == actual


def test_env_defaults_to_os_environ(monkeypatch):
    """Without environ=, load() reads the process environment."""
    monkeypatch.setenv("DURARAY_WORKER_CONCURRENCY", "9")
    expected = 9
    actual = HubConfig.load().worker_concurrency
    assert expected == actual


def test_explicit_environ_replaces_os_environ(monkeypatch):
    """With environ=, load() ignores the process environment."""
    monkeypatch.setenv("DURARAY_WORKER_CONCURRENCY", "9")
    expected = HubConfig().worker_concurrency
    actual = HubConfig.load(environ={}).worker_concurrency
    assert expected == actual


# -- load(): precedence and $DURARAY_CONFIG -----------------------------------------------


def test_precedence_defaults_file_env_overrides(tmp_path):
    """Defaults < file < environment < keyword overrides, option by option."""
    path = _write(
        tmp_path,
        "[duraray]\npartitions = 2\nactivity_threads = 3\nworker_concurrency = 5\n",
    )
    environ = {"DURARAY_ACTIVITY_THREADS": "6", "DURARAY_WORKER_CONCURRENCY": "7"}
    config = HubConfig.load(path, environ=environ, worker_concurrency=11)
    expected = {
        "max_batch_items": 5000,  # default
        "partitions": 2,  # file
        "activity_threads": 6,  # environment over file
        "worker_concurrency": 11,  # override over environment and file
    }
    actual = {name: getattr(config, name) for name in expected}
    assert expected == actual


def test_overrides_reject_unknown_names():
    """load() raises TypeError for an unknown keyword override."""
    with pytest.raises(TypeError, match=r"unknown hub option\(s\): nope$"):
        HubConfig.load(environ={}, nope=1)


def test_config_env_names_the_file(tmp_path):
    """$DURARAY_CONFIG names the TOML file when no path is given."""
    path = _write(tmp_path, "[duraray]\npartitions = 6\n")
    expected = 6
    actual = HubConfig.load(environ={CONFIG_ENV: str(path)}).partitions
    assert expected == actual


def test_config_env_file_is_below_other_variables(tmp_path):
    """DURARAY_* option variables win over the file named by $DURARAY_CONFIG."""
    path = _write(tmp_path, "[duraray]\npartitions = 6\n")
    expected = 3
    actual = HubConfig.load(environ={CONFIG_ENV: str(path), "DURARAY_PARTITIONS": "3"}).partitions
    assert expected == actual


def test_explicit_path_wins_over_config_env(tmp_path):
    """An explicit path is used instead of the file named by $DURARAY_CONFIG."""
    named = _write(tmp_path, "partitions = 6\n", "named.toml")
    explicit = _write(tmp_path, "partitions = 7\n", "explicit.toml")
    expected = 7
    actual = HubConfig.load(explicit, environ={CONFIG_ENV: str(named)}).partitions
    assert expected == actual


def test_config_env_from_os_environ(tmp_path, monkeypatch):
    """$DURARAY_CONFIG in the process environment is honoured by load()."""
    path = _write(tmp_path, "[duraray]\nlog_format = 'json'\n")
    monkeypatch.setenv(CONFIG_ENV, str(path))
    expected = "json"
    actual = HubConfig.load().log_format
    assert expected == actual


# -- the example file in cluster_config/ ----------------------------------------------------


def test_example_toml_loads_as_defaults_except_data_dir():
    """cluster_config/duraray.toml equals the defaults except its data_dir."""
    expected = HubConfig(data_dir="/data/duraray")
    actual = HubConfig.load(EXAMPLE_TOML, environ={})
    assert expected == actual


def test_example_toml_mentions_every_field():
    """cluster_config/duraray.toml documents every HubConfig field (None ones commented)."""
    text = EXAMPLE_TOML.read_text()
    expected: list[str] = []
    actual = [
        f.name
        for f in dataclasses.fields(HubConfig)
        if not re.search(rf"^#? ?{f.name} = ", text, re.MULTILINE)
    ]
    assert expected == actual


# -- App ------------------------------------------------------------------------------------


def test_app_picks_up_duraray_partitions(monkeypatch):
    """App(name) takes its partition count from DURARAY_PARTITIONS."""
    monkeypatch.setenv("DURARAY_PARTITIONS", "8")
    expected = 8
    actual = dr.App("env-hub").config.partitions
    assert expected == actual


def test_app_explicit_partitions_win_over_env(monkeypatch):
    """An explicit partitions= argument wins over DURARAY_PARTITIONS."""
    monkeypatch.setenv("DURARAY_PARTITIONS", "8")
    expected = 2
    actual = dr.App("env-hub", partitions=2).config.partitions
    assert expected == actual


def test_app_options_win_over_env(monkeypatch):
    """Other App keyword options win over their DURARAY_* variables, the rest still apply."""
    monkeypatch.setenv("DURARAY_FSYNC", "false")
    monkeypatch.setenv("DURARAY_ACTIVITY_THREADS", "2")
    config = dr.App("env-hub", activity_threads=5).config
    expected = (False, 5)
    actual = (config.fsync, config.activity_threads)
    assert expected == actual


def test_app_reads_config_env_file(tmp_path, monkeypatch):
    """App(name) loads the file named by $DURARAY_CONFIG."""
    path = _write(tmp_path, "[duraray]\npartitions = 3\nmax_batch_items = 50\n")
    monkeypatch.setenv(CONFIG_ENV, str(path))
    config = dr.App("file-hub").config
    expected = (3, 50)
    actual = (config.partitions, config.max_batch_items)
    assert expected == actual


def test_app_explicit_config_skips_environment(monkeypatch):
    """App(config=...) uses the given config instead of loading the environment."""
    monkeypatch.setenv("DURARAY_PARTITIONS", "8")
    expected = HubConfig(partitions=3)
    actual = dr.App("cfg-hub", config=HubConfig(partitions=3)).config
    assert expected == actual


def test_app_rejects_unknown_option():
    """App(name, **options) raises TypeError for an option HubConfig does not have."""
    with pytest.raises(TypeError, match=r"unknown hub option\(s\): partiton$"):
        dr.App("typo-hub", partiton=8)


def test_app_accepts_timer_interval_in_seconds():
    """App(name, maximum_timer_interval=seconds) stores a timedelta."""
    expected = timedelta(hours=1)
    actual = dr.App("timer-hub", maximum_timer_interval=3600).config.maximum_timer_interval
    assert expected == actual


def test_max_map_size_from_the_environment():
    """DURARAY_MAX_MAP_SIZE sets the cap of each partition's store, in bytes."""
    expected = 3 << 30
    actual = HubConfig.load(environ={"DURARAY_MAX_MAP_SIZE": str(3 << 30)}).max_map_size
    assert expected == actual
