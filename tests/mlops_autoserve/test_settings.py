"""Settings declared once (settings.py): each is one option of `mlops autoserve` / `mlops
gateway` and one env var, grouped in --help, and bad combinations are refused by the
settings themselves, in one line with exit 2, before anything starts. No MLflow server:
a URI that answers but is not MLflow stands in for one, so a check that did not fire ends
in exit 1 at the reachability probe instead of starting a watcher."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from dataclasses import Field

import click
import pytest
from click.testing import CliRunner
from mlops_autoserve.cli import (
    AUTOSERVE_OPTIONS,
    GATEWAY_OPTIONS,
    autoserve,
    autoserve_settings,
    gateway,
    gateway_settings,
)
from mlops_autoserve.options import TITLES, Names, Option, default_of
from mlops_autoserve.settings import AutoserveSettings, DockerSettings, GatewaySettings

from mlops_toolkit import config
from mlops_toolkit.cli import main
from mlops_toolkit.cli.common import PortRange
from mlops_toolkit.errors import ValidationError
from tests.mlops_toolkit.cli.conftest import assert_one_line_error

COMMANDS = {"autoserve": (autoserve, AUTOSERVE_OPTIONS), "gateway": (gateway, GATEWAY_OPTIONS)}
ALL_ENVVARS = {o.envvar for _, options in COMMANDS.values() for _, o in options}
OWNER = {f: cls for cls in (AutoserveSettings, DockerSettings, GatewaySettings)
         for f in cls.__dataclass_fields__.values()}  # which settings object a field is read from


@pytest.fixture(autouse=True)
def clean_env(monkeypatch) -> None:
    """The settings' env vars of whoever runs the tests must not leak in."""
    for name in ALL_ENVVARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def not_mlflow() -> Iterator[str]:
    """An HTTP server that answers 501 to everything: a tracking URI that is not MLflow."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def keep_config() -> Iterator[None]:
    """`mlops --tracking-uri` in-process changes the process-wide tracking URI: put it back."""
    before = config.settings()
    yield
    config.configure(before.tracking_uri, before.experiment, before.model_name)


def parse(command: str, *args: str) -> tuple[AutoserveSettings | None, GatewaySettings]:
    """The settings the real command builds from these options and the environment."""
    cmd, _ = COMMANDS[command]
    with cmd.make_context(command, list(args)) as ctx:
        if command == "gateway":
            return None, gateway_settings(ctx.params)
        return autoserve_settings(ctx.params)


def value_of(f: Field, settings: AutoserveSettings | None, gateway_settings_: GatewaySettings):
    owner = {AutoserveSettings: settings, DockerSettings: settings and settings.docker,
             GatewaySettings: gateway_settings_}[OWNER[f]]
    return getattr(owner, f.name)


def sample(f: Field, option: Option, tmp_path, other: bool = False) -> tuple[str, object]:
    """A valid value that is not the default: as typed (env var or option) and as the setting.
    ``other``: a second valid value, different from the first."""
    default, kind = default_of(f), option.type
    if f.name in ("auth_token", "admin_token"):
        token = "other-token" if other else "the-token"
        (tmp_path / token).write_text(token + "\n")
        return str(tmp_path / token), token
    if option.multiple:
        return ("c==3", ("c==3",)) if other else ("a==1 b==2", ("a==1", "b==2"))
    if isinstance(kind, Names):
        return ("c", frozenset({"c"})) if other else ("a, b", frozenset({"a", "b"}))
    if isinstance(kind, PortRange):
        return ("21000-21010", (21000, 21010)) if other else ("20000-20100", (20000, 20100))
    if isinstance(kind, click.Choice):
        choice = default if other else next(c for c in kind.choices if c != default)
        return choice, choice
    if isinstance(kind, click.Path):
        path = tmp_path / (f.name + ("-other" if other else ""))
        return str(path), path
    if isinstance(kind, click.IntRange):  # ports: 8100, 8101, 8102 stay apart from each other's defaults
        number = (default or kind.min or 0) + (100 if kind.max == 65535 else 1) + (2 if other else 0)
        return str(number), number
    if isinstance(kind, click.FloatRange):
        number = (0.25 if other else 0.5) if kind.max == 1 else default + (1.5 if other else 0.5)
        return str(number), number
    if option.metavar == "SIZE":
        return ("5g", "5g") if other else ("3g", "3g")
    text = f"x-{f.name}" + ("-other" if other else "")
    return text, text


# Swarm takes every Docker/Swarm option, the app-db lets --payload-log-rate be set, and a
# watcher port away from the gateway's lets --gateway-instances take the admin ports after 8001.
BASE_ENV = {"MLOPS_AUTOSERVE_RUNTIME": "swarm", "APP_DB_URL": "sqlite:///payload.db",
            "MLOPS_AUTOSERVE_WATCHER_PORT": "8090"}
CASES = [pytest.param(command, f, o, id=f"{command} {o.flag}") for command, (_, options) in COMMANDS.items()
         for f, o in options if f.name != "tracking_uri"]


def test_every_declared_setting_has_one_option_and_one_env_var():
    for name, (command, options) in COMMANDS.items():
        params = {p.name: p for p in command.params if p.name != "help"}
        assert set(params) == {o.name for _, o in options}, f"{name}: an option without a declaration"
        for f, option in options:
            param = params[option.name]
            assert param.opts == [option.flag]
            if f.name == "tracking_uri":  # the --tracking-uri of every command, from $MLFLOW_TRACKING_URI
                assert option.envvar == "MLFLOW_TRACKING_URI" and "$MLFLOW_TRACKING_URI" in param.help
            else:
                assert param.envvar == option.envvar and param.show_envvar
        envvars = [o.envvar for _, o in options]
        assert len(set(envvars)) == len(envvars), f"{name}: two options share an env var"
    assert len(COMMANDS["autoserve"][1]) == 63 and len(COMMANDS["gateway"][1]) == 19
    by_flag = {o.flag: o.envvar for _, o in AUTOSERVE_OPTIONS}
    # the env vars these options honoured before they were generated keep their names
    assert (by_flag["--payload-log-db"], by_flag["--webhook-secret"], by_flag["--environment"]) == (
        "APP_DB_URL", "MLOPS_WEBHOOK_SECRET", "MLOPS_ENVIRONMENT")
    assert by_flag["--poll-interval"] == "MLOPS_AUTOSERVE_POLL_INTERVAL"
    assert by_flag["--admin-port"] == "MLOPS_GATEWAY_ADMIN_PORT"


@pytest.mark.parametrize("command", COMMANDS)
def test_help_names_every_env_var_under_its_group(command):
    output = CliRunner().invoke(main, [command, "--help"], terminal_width=80).output
    section, seen = None, {}
    for line in output.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            section = line[:-1]
        elif line.startswith("  -"):
            seen[line.split()[0].rstrip(",")] = section
    flat = " ".join(output.split())
    for f, option in COMMANDS[command][1]:
        assert seen[option.flag] == TITLES[option.group], option.flag
        if f.name != "tracking_uri":
            assert f"env var: {option.envvar}" in flat, option.flag
    assert seen["-h"] == "Other options"


@pytest.mark.parametrize(("command", "f", "option"), CASES)
def test_an_env_var_sets_its_setting(command, f, option, monkeypatch, tmp_path):
    for name, value in BASE_ENV.items():
        monkeypatch.setenv(name, value)
    if isinstance(default_of(f), bool):
        text, expected = "1", not default_of(f)
    else:
        text, expected = sample(f, option, tmp_path)
        assert expected != default_of(f)
    monkeypatch.setenv(option.envvar, text)
    assert value_of(f, *parse(command)) == expected


NOT_FLAGS = [c for c in CASES if not isinstance(default_of(c.values[1]), bool)]  # a flag cannot be turned off


@pytest.mark.parametrize(("command", "f", "option"), NOT_FLAGS)
def test_the_option_beats_the_env_var(command, f, option, monkeypatch, tmp_path):
    for name, value in BASE_ENV.items():
        monkeypatch.setenv(name, value)
    env_text, env_value = sample(f, option, tmp_path, other=True)
    text, expected = sample(f, option, tmp_path)
    assert env_value != expected
    monkeypatch.setenv(option.envvar, env_text)
    args = [a for word in text.split() for a in (option.flag, word)] if option.multiple else [option.flag, text]
    assert value_of(f, *parse(command, *args)) == expected


def test_a_flag_env_var_reads_as_a_boolean(monkeypatch):
    monkeypatch.setenv("MLOPS_AUTOSERVE_NO_GATEWAY", "false")
    monkeypatch.setenv("MLOPS_AUTOSERVE_LEAVE_RUNNING", "yes")
    settings, _ = parse("autoserve")
    assert settings.run_gateway and settings.leave_running
    monkeypatch.setenv("MLOPS_AUTOSERVE_NO_GATEWAY", "1")
    settings, _ = parse("autoserve")
    assert not settings.run_gateway and settings.gateway_admin_urls == ()  # no gateway here to ask


def test_the_watcher_fills_in_what_it_derives_from_the_gateway_options():
    settings, gateway_ = parse("autoserve", "--host", "127.0.0.2", "--port", "9000", "--admin-port", "9001",
                               "--state-dir", "/tmp/s")
    assert (settings.gateway_host, settings.control_host) == ("127.0.0.2",) * 2
    assert gateway_.admin_host == "127.0.0.1"  # the admin port stays on loopback unless --admin-host says otherwise
    assert (settings.gateway_port, settings.gateway_admin_port, settings.gateway_admin_urls) == (
        9000, 9001, ("http://127.0.0.1:9001",))
    assert str(gateway_.state_dir) == str(settings.state_dir) == "/tmp/s"
    assert (settings.deploy_workers, settings.deploy_workers_per_model) == (8, 2)  # defaults unchanged
    # every option's default is the setting's
    assert parse("autoserve")[0] == AutoserveSettings(tracking_uri=config.settings().tracking_uri,
                                                      gateway_admin_urls=("http://127.0.0.1:8001",))
    assert parse("gateway")[1] == GatewaySettings()


def test_the_watcher_reads_every_gateway_instance_with_the_admin_token(tmp_path):
    """--gateway-instances N: the gateway it starts runs N instances, the watcher reads each
    admin port, with the admin token; given URLs replace those (repeatable)."""
    (tmp_path / "admin").write_text("s3cret\n")
    settings, gateway_ = parse("autoserve", "--gateway-instances", "3", "--admin-port", "9001", "--watcher-port",
                               "9100", "--admin-token-file", str(tmp_path / "admin"))
    assert (gateway_.instances, settings.gateway_instances) == (3, 3)
    assert settings.gateway_admin_urls == ("http://127.0.0.1:9001", "http://127.0.0.1:9002", "http://127.0.0.1:9003")
    assert settings.gateway_admin_token == gateway_.admin_token == "s3cret"
    assert "s3cret" not in repr(settings)
    given, _ = parse("autoserve", "--gateway-admin-url", "http://a:1", "--gateway-admin-url", "http://b:2")
    assert given.gateway_admin_urls == ("http://a:1", "http://b:2")


REFUSED = [
    pytest.param({"--port": "9100", "--admin-port": "9100"}, "--port and --admin-port must differ (both 9100)",
                 id="gateway ports"),
    pytest.param({"--watcher-port": "9100", "--port": "9100"}, "--watcher-port 9100 is also a gateway port",
                 id="watcher port = gateway port"),
    pytest.param({"--watcher-port": "9101", "--admin-port": "9101"}, "--watcher-port 9101 is also a gateway port",
                 id="watcher port = admin port"),
    pytest.param({"--gateway-instances": "3", "--admin-port": "9101", "--watcher-port": "9103"},
                 "--watcher-port 9103 is also a gateway port (--admin-port 9101-9103 with --gateway-instances 3)",
                 id="watcher port among the admin ports"),
    pytest.param({"--gateway-instances": "3", "--admin-port": "9101", "--port": "9102", "--watcher-port": "9200"},
                 "--port 9102 is one of the admin ports 9101-9103 (--admin-port 9101, --gateway-instances 3)",
                 id="gateway port among the admin ports"),
    pytest.param({"--min-replicas": "3", "--max-replicas": "2"}, "--max-replicas 2 is below --min-replicas 3",
                 id="replicas"),
    pytest.param({"--max-replicas": "3", "--scale-target-inflight": "0"},
                 "autoscaling needs a target: --scale-target-inflight or --scale-target-rps above 0",
                 id="autoscaling target"),
    pytest.param({"--docker-image": "img:1", "--instance": "a"},
                 "--docker-image, --instance are only used with --runtime docker or swarm, not --runtime process",
                 id="docker options on processes"),
    pytest.param({"--runtime": "docker", "--swarm-reserve-cpus": "1"},
                 "--swarm-reserve-cpus is only used with --runtime swarm, not --runtime docker",
                 id="swarm option on docker"),
    pytest.param({"--runtime": "docker", "--docker-memory": "lots"},
                 "--docker-memory 'lots' is not a size like 512m or 2g", id="docker size"),
    pytest.param({"--runtime": "swarm", "--swarm-reserve-memory": "2 gigs"},
                 "--swarm-reserve-memory '2 gigs' is not a size like 512m or 2g", id="swarm size"),
    pytest.param({"--payload-log-rate": "0.5"},
                 "--payload-log-rate needs the app-db: set --payload-log-db or APP_DB_URL", id="payload log, no db"),
    pytest.param({"--auth-token-file": "/nonexistent/token"}, "cannot read --auth-token-file /nonexistent/token",
                 id="token file"),
    pytest.param({"--poll-interval": "0"}, "0.0 is not in the range x>=0.1", id="range"),
    pytest.param({"--port-range": "9000"}, "expected LOW-HIGH", id="port range"),
]


@pytest.mark.parametrize(("options", "error"), REFUSED)
def test_a_bad_combination_is_refused_in_one_line_from_options_or_env_vars(options, error, not_mlflow, tmp_path,
                                                                            keep_config):
    envvar = {o.flag: o.envvar for _, o in AUTOSERVE_OPTIONS}
    state = tmp_path / "state"
    unset = dict.fromkeys(ALL_ENVVARS)
    lines = []
    for args, env in (([a for flag, value in options.items() for a in (flag, value)], unset),
                      ([], {**unset, **{envvar[flag]: value for flag, value in options.items()}})):
        result = CliRunner().invoke(main, ["autoserve", "--tracking-uri", not_mlflow, "--state-dir", str(state), *args],
                                    env=env)
        assert result.exit_code == 2, result.stderr
        assert_one_line_error(result.stderr, error)
        lines.append(result.stderr)
    assert lines[0] == lines[1]  # the same line, whichever way the value came
    assert not state.exists()  # refused before the state dir lock: nothing started


def test_mlops_gateway_refuses_the_same_port_twice(keep_config):
    result = CliRunner().invoke(main, ["gateway", "--port", "9100"], env={"MLOPS_GATEWAY_ADMIN_PORT": "9100"})
    assert result.exit_code == 2
    assert_one_line_error(result.stderr, "--port and --admin-port must differ (both 9100)")


@pytest.mark.parametrize(("args", "error"), [
    (["--instances", "3", "--admin-port", "9101", "--port", "9103"],
     "--port 9103 is one of the admin ports 9101-9103 (--admin-port 9101, --instances 3)"),
    (["--instances", "4", "--admin-port", "65534"], "--admin-port 65534 with --instances 4 needs ports up to 65537"),
])
def test_mlops_gateway_refuses_admin_ports_that_do_not_fit(args, error, keep_config):
    result = CliRunner().invoke(main, ["gateway", *args])
    assert result.exit_code == 2
    assert_one_line_error(result.stderr, error)


def test_settings_built_in_code_are_checked_too():
    with pytest.raises(ValidationError, match="--max-replicas 1 is below --min-replicas 2"):
        AutoserveSettings(tracking_uri="x", min_replicas=2, max_replicas=1)
    with pytest.raises(ValidationError, match="backoff_initial 10.0 is above backoff_max 5.0"):
        AutoserveSettings(tracking_uri="x", backoff_initial=10.0, backoff_max=5.0)
    with pytest.raises(ValidationError, match="--port-range 19000-18000"):
        AutoserveSettings(tracking_uri="x", port_range=(19000, 18000))
    with pytest.raises(ValidationError, match="must differ"):
        GatewaySettings(port=9000, admin_port=9000)
    with pytest.raises(ValidationError, match="--gateway-instances is only used for the gateway the watcher starts"):
        AutoserveSettings(tracking_uri="x", run_gateway=False, gateway_instances=2)
    # runtimes built directly (tests, benchmarks) pass Docker settings whatever `runtime` says
    settings = AutoserveSettings(tracking_uri="x", docker=DockerSettings(network="n"))
    with pytest.raises(ValidationError, match="--docker-network is only used with --runtime docker or swarm"):
        settings.check_runtime_options()


@pytest.mark.slow
def test_env_vars_reach_the_installed_command(mlops_script, not_mlflow, tmp_path):
    """As a user runs it: a bad pair from the environment is one line and exit 2, and
    MLFLOW_TRACKING_URI still names the server (here one that is not MLflow: exit 1)."""
    bad = mlops_script("autoserve", "--state-dir", str(tmp_path / "a"),
                       env={"MLOPS_AUTOSERVE_MIN_REPLICAS": "3", "MLOPS_AUTOSERVE_MAX_REPLICAS": "2"})
    assert bad.returncode == 2
    assert_one_line_error(bad.stderr, "--max-replicas 2 is below --min-replicas 3")
    # --no-gateway: the watcher port may equal the gateway's (another process serves it)
    alone = mlops_script("autoserve", "--state-dir", str(tmp_path / "b"), "--watcher-port", "8000",
                         env={"MLFLOW_TRACKING_URI": not_mlflow, "MLOPS_AUTOSERVE_NO_GATEWAY": "1"})
    assert alone.returncode == 1
    assert_one_line_error(alone.stderr, not_mlflow, "is it an MLflow tracking server?")


def test_a_default_watcher_port_moves_out_of_the_gateway_instances_admin_ports():
    """`mlops autoserve --gateway-instances 2` works with the default ports: the instances take
    admin ports 8001-8002, so the watcher's default 8002 moves to 8003; a port the user chose
    is never moved: its clash is a one-line error."""
    settings, gateway_ = parse("autoserve", "--gateway-instances", "2")
    assert (gateway_.admin_port, gateway_.instances, settings.control_port) == (8001, 2, 8003)
    assert parse("autoserve")[0].control_port == 8002
    with pytest.raises(ValidationError, match="--watcher-port 8002 is also a gateway port"):
        parse("autoserve", "--gateway-instances", "2", "--watcher-port", "8002")
