"""server.launch.py's control plane (husarnet_ros.launch_support.control_plane, ros/launch_actions.py): which
processes `dashboard:=true` starts with which command lines, the license's base servers, and every bad
argument or combination refused with a message saying what to give, before anything starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from husarnet_ros import launch_support
from husarnet_ros.cli import dashboard as dashboard_cli
from husarnet_ros.cli import websetup as websetup_cli
from husarnet_ros.core.errors import ConfigError
from husarnet_ros.dashboard.server import parse_listen as dashboard_parse_listen

WEBSETUP = "fc94:b01d:1803:8dd8:b293:5c7d:7639:932a"
BASE = ["husarnet-ros"]


def plane(**values: str) -> launch_support.ControlPlane | None:
    return launch_support.control_plane(values, environ={}, base=BASE)


def plane_in(environ: dict[str, str], **values: str) -> launch_support.ControlPlane | None:
    """As a launch in a shell with ``environ`` would decide."""
    return launch_support.control_plane(values, environ=environ, base=BASE)


def dashboard_on(**values: str) -> launch_support.ControlPlane:
    found = plane(**{"dashboard": "true", **values})
    assert found is not None
    return found


def option(argv: tuple[str, ...], name: str) -> list[str]:
    """Every value given to ``name`` in ``argv``."""
    return [argv[i + 1] for i, part in enumerate(argv) if part == name]


# --- without dashboard:=true --------------------------------------------------------------------------------


def test_without_the_dashboard_nothing_more_starts() -> None:
    assert plane() is None
    assert plane(dashboard="false", udp_port="5590") is None
    assert plane(dashboard=" False ") is None
    # Its defaults given explicitly are no reason to refuse.
    assert plane(dashboard_listen="[::]:8080", websetup_port="5590") is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("websetup_address", WEBSETUP),
        ("public_host", "198.18.0.10"),
        ("dashboard_data_dir", "/tmp/d"),
        ("database_url", "sqlite:////tmp/d.sqlite3"),
        ("public_url", "http://198.18.0.10:8080"),
        ("name", "fleet"),
        ("base_servers", "198.18.0.11:5582"),
        ("dashboard_listen", "198.18.0.10:8080"),
        ("websetup_port", "5591"),
    ],
)
def test_a_dashboard_argument_without_the_dashboard_is_refused(name: str, value: str) -> None:
    with pytest.raises(
        ConfigError, match=rf"launch argument {name}:= is for the Dashboard: add dashboard:=true"
    ):
        plane(**{name: value})


def test_several_dashboard_arguments_are_named_together() -> None:
    with pytest.raises(
        ConfigError, match=r"arguments public_host:=, websetup_address:= are for the Dashboard"
    ):
        plane(public_host="198.18.0.10", websetup_address=WEBSETUP)


def test_dashboard_must_be_true_or_false() -> None:
    with pytest.raises(ConfigError, match=r"dashboard:='yes' must be one of true, false"):
        plane(dashboard="yes")


# --- the processes ------------------------------------------------------------------------------------------


def test_the_dashboard_and_websetup_share_the_data_dir_and_the_license_lists_the_base_servers(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    found = dashboard_on(
        public_host="198.18.0.10",
        udp_port="5590",
        dashboard_listen="[::]:8081",
        dashboard_data_dir=str(data),
        name="lab fleet",
        # The launch's own base server in another spelling is not listed twice; the others keep their order.
        base_servers=" base.example.com, [FD00:98::5]:7000 ,198.18.0.10:5590,",
        websetup_address=WEBSETUP.upper(),
        websetup_port="5591",
    )
    bases = ("198.18.0.10:5590", "base.example.com:5582", "[fd00:98::5]:7000")
    assert found.license_base_servers == bases
    assert found.setup_address == "198.18.0.10:8081"
    assert found.dashboard.argv == (
        "husarnet-ros", "dashboard", "serve", "--listen", "[::]:8081", "--data-dir", str(data),
        "--public-url", "http://198.18.0.10:8081", "--name", "lab fleet",
        "--base-server", bases[0], "--base-server", bases[1], "--base-server", bases[2],
        "--websetup-address", WEBSETUP, "--websetup-port", "5591",
    )  # fmt: skip
    assert found.websetup is not None
    assert found.websetup.argv == (
        "husarnet-ros", "websetup", "--listen", f"[{WEBSETUP}]:5591", "--data-dir", str(data),
    )  # fmt: skip
    # The log lines say what runs where, and what robots run.
    for text in ("[::]:8081", "http://198.18.0.10:8081", ", ".join(bases), str(data)):
        assert text in found.dashboard.what
    assert found.dashboard.what.endswith("robots run: husarnet-ros setup-server 198.18.0.10:8081")
    assert found.websetup.what.startswith(f"Websetup on [{WEBSETUP}]:5591")


def test_the_defaults_listen_everywhere_on_8080_with_the_dashboards_default_data_dir() -> None:
    found = dashboard_on(public_host="base.example.com")
    assert found.websetup is None
    assert option(found.dashboard.argv, "--listen") == ["[::]:8080"]
    assert option(found.dashboard.argv, "--data-dir") == [dashboard_cli.DEFAULT_DATA_DIR]
    assert option(found.dashboard.argv, "--public-url") == ["http://base.example.com:8080"]
    assert option(found.dashboard.argv, "--base-server") == ["base.example.com:5582"]
    assert "--name" not in found.dashboard.argv
    assert "--websetup-address" not in found.dashboard.argv
    assert "no license.json" in found.dashboard.what  # the Dashboard cannot issue one without Websetup


def test_the_commands_are_understood_by_the_cli(tmp_path: Path) -> None:
    found = dashboard_on(
        public_host="fd00:98::10",
        dashboard_listen="198.18.0.10:8080",
        dashboard_data_dir=str(tmp_path),
        database_url="postgresql+psycopg://dash@127.0.0.1:5433/dash",
        base_servers="198.18.0.11:5583",
        websetup_address=WEBSETUP,
        name="fleet",
    )
    assert found.websetup is not None
    serve = dashboard_cli.serve.make_context("serve", list(found.dashboard.argv[3:]))
    assert serve.params["base_servers"] == ("[fd00:98::10]:5582", "198.18.0.11:5583")
    assert serve.params["websetup_address"] == WEBSETUP
    assert serve.params["database_url"] == "postgresql+psycopg://dash@127.0.0.1:5433/dash"
    assert serve.params["public_url"] == "http://[fd00:98::10]:8080"
    assert dashboard_parse_listen(serve.params["listen"]) == ("198.18.0.10", 8080)
    websetup = websetup_cli.websetup.make_context("websetup", list(found.websetup.argv[2:]))
    assert websetup.params["database_url"] == "postgresql+psycopg://dash@127.0.0.1:5433/dash"
    assert websetup_cli.parse_listen(websetup.params["listen"]) == (WEBSETUP, 5590)


# --- where robots reach the server --------------------------------------------------------------------------


def test_the_public_host_comes_from_the_public_url_or_a_specific_listen_address() -> None:
    from_url = dashboard_on(public_url="https://dash.example.com:8443/fleet", udp_port="5590")
    assert from_url.license_base_servers == ("dash.example.com:5590",)
    assert option(from_url.dashboard.argv, "--public-url") == ["https://dash.example.com:8443/fleet"]
    assert from_url.setup_address == "dash.example.com:8443"
    from_listen = dashboard_on(dashboard_listen="[fd00:98::10]:8080")
    assert from_listen.license_base_servers == ("[fd00:98::10]:5582",)
    assert option(from_listen.dashboard.argv, "--public-url") == ["http://[fd00:98::10]:8080"]
    # public_host wins over both; an IPv6 one may come in brackets.
    both = dashboard_on(
        public_host="[fd00:98::20]", public_url="http://198.18.0.10:80", dashboard_listen="198.18.0.10:80"
    )
    assert both.license_base_servers == ("[fd00:98::20]:5582",)
    assert option(both.dashboard.argv, "--public-url") == ["http://198.18.0.10:80"]


def test_without_a_reachable_host_the_launch_says_to_give_one() -> None:
    with pytest.raises(ConfigError, match=r"dashboard:=true needs public_host:=HOST"):
        dashboard_on()
    with pytest.raises(ConfigError, match=r"dashboard:=true needs public_host:=HOST"):
        dashboard_on(dashboard_listen="0.0.0.0:8080")
    with pytest.raises(ConfigError, match=r"public_host: '::' is no address robots can reach"):
        dashboard_on(public_host="::")
    with pytest.raises(ConfigError, match=r"public_url: '0.0.0.0' is no address robots can reach"):
        dashboard_on(public_url="http://0.0.0.0:8080")
    with pytest.raises(
        ConfigError, match=r"public_host: 'bad host!' is neither an IP address nor a host name"
    ):
        dashboard_on(public_host="bad host!")


# --- storage ------------------------------------------------------------------------------------------------


def test_the_dashboards_environment_variables_are_honoured(tmp_path: Path) -> None:
    environ = {dashboard_cli.DATA_DIR_ENV: str(tmp_path / "env-data")}
    found = plane_in(environ, dashboard="true", public_host="198.18.0.10", websetup_address=WEBSETUP)
    assert found is not None
    assert found.websetup is not None
    assert option(found.dashboard.argv, "--data-dir") == [str(tmp_path / "env-data")]
    assert option(found.websetup.argv, "--data-dir") == [str(tmp_path / "env-data")]
    # The argument beats the environment.
    given = plane_in(
        environ, dashboard="true", public_host="h.example", dashboard_data_dir=str(tmp_path / "x")
    )
    assert given is not None
    assert option(given.dashboard.argv, "--data-dir") == [str(tmp_path / "x")]


def test_a_database_url_goes_to_both_and_its_password_is_never_logged(tmp_path: Path) -> None:
    url = "postgresql+psycopg://dash:s3cret@127.0.0.1:5433/dash"
    environ = {dashboard_cli.DATABASE_URL_ENV: url}
    found = plane_in(environ, dashboard="true", public_host="198.18.0.10", websetup_address=WEBSETUP)
    assert found is not None
    assert found.websetup is not None
    assert option(found.dashboard.argv, "--database-url") == [url]
    assert option(found.websetup.argv, "--database-url") == [url]
    assert "--data-dir" not in found.websetup.argv  # the database is the URL's, not a data dir's SQLite file
    assert option(found.dashboard.argv, "--data-dir")  # the license key still lives in one
    for what in (found.dashboard.what, found.websetup.what):
        assert "s3cret" not in what
        assert "postgresql+psycopg://dash:***@127.0.0.1:5433/dash" in what


def test_a_relative_data_dir_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    found = dashboard_on(public_host="198.18.0.10", dashboard_data_dir="dash")
    assert option(found.dashboard.argv, "--data-dir") == [str(tmp_path.resolve() / "dash")]


# --- bad values ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"dashboard_listen": "::8080"}, r"dashboard_listen:='::8080': write \[IPv6\]:PORT or IPv4:PORT"),
        ({"dashboard_listen": "localhost:8080"}, r"dashboard_listen:='localhost:8080': write"),
        ({"dashboard_listen": "[198.18.0.10]:8080"}, r"dashboard_listen:='\[198.18.0.10\]:8080': write"),
        ({"dashboard_listen": "[::]:0"}, r"dashboard_listen:='\[::\]:0': the port must be a number from 1"),
        ({"dashboard_listen": "[::]:http"}, r"dashboard_listen:='\[::\]:http': the port must be"),
        ({"udp_port": "70000"}, r"udp_port:='70000': the port must be a number from 1 to 65535"),
        (
            {"websetup_address": "fd00:98::1"},
            r"websetup_address:='fd00:98::1' is not an fc94 overlay",
        ),
        ({"websetup_address": "robot1"}, r"websetup_address:='robot1' is not an fc94 overlay address"),
        ({"websetup_address": WEBSETUP, "websetup_port": "x"}, r"websetup_port:='x': the port must be"),
        ({"websetup_port": "5591"}, r"websetup_port:= needs websetup_address:=FC94"),
        ({"base_servers": "a:b"}, r"base_servers:=: base server 'a:b': port 'b' is not a number"),
        ({"base_servers": "[fd00:98::5"}, r"base_servers:=: base server '\[fd00:98::5': expected"),
        ({"public_url": "dash.example.com:8080"}, r"public_url:='dash.example.com:8080': give an http://"),
        (
            {"database_url": "mysql://dash@db/dash"},
            r"database_url:=: database backend 'mysql' is not",
        ),
        (
            {"database_url": "sqlite://"},
            r"database_url:=: an in-memory SQLite database would lose",
        ),
    ],
)
def test_bad_values_are_refused_with_what_to_give(values: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        dashboard_on(**{"public_host": "198.18.0.10", **values})


# --- waiting for the Dashboard's ready line -----------------------------------------------------------------


def test_ready_line_needs_the_whole_line_at_a_line_start_and_fires_once() -> None:
    ready = launch_support.ReadyLine("Dashboard on ")
    assert not ready.feed("INFO migrating; Dashboard on the way\n")  # not at the start of a line
    assert not ready.feed("Dashb")
    assert not ready.feed("oard on http://[::]:8080")  # the line is not complete yet
    assert ready.feed(" (public URL http://198.18.0.10:8080)\nlicense key fingerprint SHA256:x\n")
    assert not ready.feed("Dashboard on http://[::]:8080\n")  # once only
    assert ready.seen


def test_ready_line_in_one_chunk_among_others_and_after_a_very_long_line() -> None:
    ready = launch_support.ReadyLine("Dashboard on ")
    assert not ready.feed("x" * 100_000)
    assert not ready.feed("y" * 100_000 + "\n")
    assert ready.feed("warning: something\nDashboard on http://127.0.0.1:8080\nmore")


# --- the launch actions -------------------------------------------------------------------------------------


def test_launch_actions_start_websetup_only_once_the_dashboard_is_ready() -> None:
    launch_actions = pytest.importorskip("husarnet_ros.ros.launch_actions")
    from launch.actions import ExecuteProcess, LogInfo, RegisterEventHandler
    from launch.events.process import ProcessStdout
    from launch.launch_context import LaunchContext

    found = dashboard_on(public_host="198.18.0.10", websetup_address=WEBSETUP)
    actions = launch_actions._control_plane(found)
    kinds = [LogInfo, ExecuteProcess, RegisterEventHandler, RegisterEventHandler]  # exit, then output
    assert [type(action) for action in actions] == kinds
    assert _text(actions[0]) == "[husarnet_ros] starting " + found.dashboard.what
    assert _cmd(actions[1]) == list(found.dashboard.argv)
    output_handler = actions[3].event_handler
    context = LaunchContext()

    def stdout(text: bytes) -> Any:
        event = ProcessStdout(text=text, action=actions[1], name="d", cmd=["d"], cwd=None, env=None, pid=1)
        assert output_handler.matches(event)
        return output_handler.handle(event, context)

    assert stdout(b"INFO migrating the database\n") is None
    started = stdout(b"Dashboard on http://[::]:8080 (public URL http://198.18.0.10:8080)\n")
    assert found.websetup is not None
    assert [type(action) for action in started] == [LogInfo, ExecuteProcess, RegisterEventHandler]
    assert _text(started[0]) == "[husarnet_ros] starting " + found.websetup.what
    assert _cmd(started[1]) == list(found.websetup.argv)
    assert stdout(b"Dashboard on http://[::]:8080\n") is None  # never a second Websetup


def test_launch_actions_without_websetup_start_the_dashboard_alone() -> None:
    launch_actions = pytest.importorskip("husarnet_ros.ros.launch_actions")
    from launch.actions import ExecuteProcess, LogInfo, RegisterEventHandler

    actions = launch_actions._control_plane(dashboard_on(public_host="198.18.0.10"))
    assert [type(action) for action in actions] == [LogInfo, ExecuteProcess, RegisterEventHandler]


def test_server_launch_checks_every_argument_before_starting_anything() -> None:
    launch_actions = pytest.importorskip("husarnet_ros.ros.launch_actions")
    from launch.actions import ExecuteProcess
    from launch.launch_context import LaunchContext

    def server_actions(**given: str) -> list[Any]:
        context = LaunchContext()
        for argument in launch_actions.SERVER_ARGUMENTS:
            context.launch_configurations[argument.name] = given.get(argument.name, argument.default)
        result: list[Any] = launch_actions._server(context)
        return result

    plain = [a for a in server_actions() if isinstance(a, ExecuteProcess)]
    assert [_cmd(a)[1:2] for a in plain] == [["base-server"]]  # without dashboard:=true: as before
    with pytest.raises(ConfigError, match="websetup_address:= is for the Dashboard"):
        server_actions(websetup_address=WEBSETUP)
    with pytest.raises(ConfigError, match="websetup_address:='fd00::1' is not an fc94"):
        server_actions(dashboard="true", public_host="198.18.0.10", websetup_address="fd00::1")
    both = [
        a
        for a in server_actions(dashboard="true", public_host="198.18.0.10")
        if isinstance(a, ExecuteProcess)
    ]
    assert [_cmd(a)[1:3] for a in both] == [["base-server", "--listen"], ["dashboard", "serve"]]
    assert option(tuple(_cmd(both[1])), "--base-server") == ["198.18.0.10:5582"]


def _text(action: Any) -> str:
    return "".join(getattr(part, "text", str(part)) for part in action.msg)


def _cmd(process: Any) -> list[str]:
    out: list[str] = []
    for part in process.cmd:
        for piece in part if isinstance(part, list) else [part]:
            out.append(str(getattr(piece, "text", piece)))
    return out
