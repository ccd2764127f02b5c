"""What every husarnet_ros node needs: parameters, the link to the daemon, QoS, and ``main()``.

Parameters
    ``ParamSpec(name, default, description, min_value=None, max_value=None, min_exclusive=False,
    choices=())`` describes one double / bool / string parameter. ``declare_parameters(node, specs)``
    installs one on-set-parameters callback that refuses invalid values with a clear reason (type, range,
    exclusive minimum, NaN/inf, allowed strings) and declares every spec with a ``ParameterDescriptor``
    (description, ``FloatingPointRange`` for bounded doubles, allowed values in ``additional_constraints``).
    A bad value in a parameter file does not kill the node: it is logged as an error and the default is
    used; an integer given for a double (``period: 1``, ``ros2 param set N period 1``) is taken as that
    double. A value of the wrong type is refused by rclpy itself ("Wrong parameter type ...").
    ``COMMON_PARAMETERS`` are declared by every node: ``control_socket`` (string, "" =
    $HUSARNET_ROS_CONTROL_SOCKET or the default socket) and ``retry_period_s`` (double 2.0, 0.1..60).
    ``check_value(spec, value) -> str | None`` is the pure validator (None = valid, else the reason).
    Typed getters: ``param_float(node, name)``, ``param_bool(node, name)``, ``param_str(node, name)``.
    To react to accepted changes use rclpy's ``node.add_post_set_parameters_callback``.
    ``periodic_timer(node, period_parameter, callback, callback_group=None)``: a timer whose period is
    that double parameter and follows its changes.

Daemon
    ``DaemonLink(node, socket_path="", retry_period_s=2.0)`` owns a ``ControlClient`` for the socket.
    ``link.call(lambda c: c.peers())`` for periodic work: the result, or None when the daemon is not
    answering or refused. While the daemon is down it is asked at most once per ``retry_period_s`` (calls in
    between return None at once). ``link.request(fn) -> Reply`` for user requests (services): always asks,
    never raises a ``ClientError``; ``Reply.value`` or ``Reply.error`` (the daemon's own message).
    Outages are logged once ("husarnet daemon not running (no socket at SOCKET): start it with ...") and
    the recovery once ("husarnet daemon back at SOCKET ..."); never a traceback. ``link.state`` is
    ``LinkState.UNKNOWN`` (not asked yet), ``UP`` or ``DOWN``; ``link.ever_answered`` tells a daemon
    that stopped answering (stale data) from one that never answered. ``link.set_socket(path)`` and
    ``link.retry_period_s`` follow parameter changes; ``link.close()``.
    ``DaemonLink.from_parameters(node)`` builds one from the declared common parameters and keeps it
    following their changes.

QoS
    ``LATCHED_QOS``: RELIABLE + TRANSIENT_LOCAL + KEEP_LAST depth 1 (state topics: a late subscriber gets
    the current value). ``DIAGNOSTICS_QOS``: depth 10, the ROS default, for ``/diagnostics``.

main()
    ``run_node(NodeClass, args, multi_threaded=False)``: first, when a launch asked for it
    (``husarnet_ros.exit_with_parent``), have the kernel send SIGTERM when that launch exits, so a node never
    outlives a killed launch; then rclpy.init(args), create the node, spin until Ctrl-C / SIGTERM /
    external shutdown, call ``node.close()`` if the node has one, destroy the node, rclpy.try_shutdown,
    return (exit code 0). A ``HusarnetError`` raised before spinning (the launch already gone, creating
    the node) is printed as one line and exits with code 1. Use
    ``multi_threaded=True`` (with a ``ReentrantCallbackGroup`` for the callbacks that may run in parallel)
    when a service can block for long (ping) and must not stall the other callbacks.
"""

from __future__ import annotations

import contextlib
import math
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Generic, TypeVar

import rclpy
from rcl_interfaces.msg import FloatingPointRange, ParameterDescriptor, SetParametersResult
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.timer import Timer

from ..api import DEFAULT_CONTROL_SOCKET, resolve_control_socket
from ..client import ClientError, ControlClient, ControlError, DaemonUnavailable
from ..core.errors import HusarnetError
from ..exit_with_parent import exit_with_parent_if_asked

T = TypeVar("T")
ParamValue = float | bool | str

# --- QoS ---------------------------------------------------------------------------------------------------

LATCHED_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)
DIAGNOSTICS_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=10,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)

# --- parameters --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParamSpec:
    """One node parameter: its type is the type of ``default`` (float, bool or str)."""

    name: str
    default: ParamValue
    description: str
    min_value: float | None = None
    max_value: float | None = None
    # True when min_value itself is not allowed ("> 0"); FloatingPointRange cannot say that.
    min_exclusive: bool = False
    choices: tuple[str, ...] = ()

    def descriptor(self) -> ParameterDescriptor:
        descriptor = ParameterDescriptor(name=self.name, description=self.description)
        if isinstance(self.default, float) and self.min_value is not None and self.max_value is not None:
            descriptor.floating_point_range = [
                FloatingPointRange(from_value=self.min_value, to_value=self.max_value, step=0.0)
            ]
        constraints = []
        if self.min_value is not None and (self.min_exclusive or self.max_value is None):
            constraints.append(f"{'>' if self.min_exclusive else '>='} {self.min_value:g}")
        if self.choices:
            constraints.append("one of: " + ", ".join(self.choices))
        descriptor.additional_constraints = "; ".join(constraints)
        return descriptor


def _type_name(value: object) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, float):
        return "double"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, str):
        return "string"
    return type(value).__name__


def check_value(spec: ParamSpec, value: object) -> str | None:
    """None when ``value`` is valid for ``spec``, else the reason it is refused (for the user)."""
    expected = _type_name(spec.default)
    if isinstance(spec.default, float):
        # An integer is a valid double (YAML `1` for `1.0`); a bool is not.
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"{spec.name} must be a {expected}, got {_type_name(value)} {value!r}"
        number = float(value)
        if not math.isfinite(number):
            return f"{spec.name} must be a finite number, got {number!r}"
        low, high = spec.min_value, spec.max_value
        if low is not None and (number < low or (spec.min_exclusive and number == low)):
            bound = f"greater than {low:g}" if spec.min_exclusive else f"at least {low:g}"
            if high is not None:
                bound += f" and at most {high:g}"
            return f"{spec.name} must be {bound}, got {number:g}"
        if high is not None and number > high:
            return f"{spec.name} must be at most {high:g}, got {number:g}"
        return None
    if isinstance(value, bool) != isinstance(spec.default, bool) or not isinstance(value, type(spec.default)):
        return f"{spec.name} must be a {expected}, got {_type_name(value)} {value!r}"
    if spec.choices and value not in spec.choices:
        return f"{spec.name} must be one of {', '.join(spec.choices)}, got {value!r}"
    return None


COMMON_PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec(
        "control_socket",
        "",
        "Unix socket of the husarnet_ros daemon's control API; empty = $HUSARNET_ROS_CONTROL_SOCKET or "
        f"{DEFAULT_CONTROL_SOCKET}",
    ),
    ParamSpec(
        "retry_period_s",
        2.0,
        "Seconds between attempts to reach a daemon that is not answering",
        min_value=0.1,
        max_value=60.0,
    ),
)

# The fleet file and this robot's name in it: the whitelist, hosts and dds nodes each take their part of it.
FLEET_PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec("fleet_file", "", "Fleet YAML file (see config/fleet.yaml); empty = no fleet file"),
    ParamSpec("robot", "", "This robot's name in the fleet file; empty = the daemon's hostname"),
)


def _validator(specs: Sequence[ParamSpec]) -> Callable[[list[Parameter[Any]]], SetParametersResult]:
    by_name = {spec.name: spec for spec in specs}

    def validate(parameters: list[Parameter[Any]]) -> SetParametersResult:
        for parameter in parameters:
            spec = by_name.get(parameter.name)
            if spec is None:
                continue  # another callback's (or rclpy's own, e.g. use_sim_time)
            reason = check_value(spec, parameter.value)
            if reason is not None:
                return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    return validate


def _declare_one(node: Node, spec: ParamSpec) -> None:
    # rclpy has no public accessor of the overrides (parameter files, -p); read to accept an int as a double.
    overrides: dict[str, Parameter[Any]] = node._parameter_overrides
    override = overrides.get(spec.name)
    descriptor = spec.descriptor()
    if override is not None:
        value = override.value
        # YAML `2` for a double: take it as 2.0 instead of refusing the whole node.
        if isinstance(spec.default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        reason = check_value(spec, value)
        if reason is None:
            try:
                node.declare_parameter(spec.name, value, descriptor, ignore_override=True)
                return
            except (InvalidParameterValueException, InvalidParameterTypeException) as exc:
                reason = str(exc)
        node.get_logger().error(
            f"invalid parameter value from the launch/parameter file: {reason}; "
            f"using the default {spec.name}={spec.default!r}"
        )
    node.declare_parameter(spec.name, spec.default, descriptor, ignore_override=True)


_DOUBLES_ATTRIBUTE = "_husarnet_double_parameters"


def _accept_integers_for_doubles(node: Node, specs: Sequence[ParamSpec]) -> None:
    """`ros2 param set ... poll_period_s 1` sends an integer: take it as 1.0 instead of a type error."""
    doubles: set[str] | None = getattr(node, _DOUBLES_ATTRIBUTE, None)
    if doubles is None:
        doubles = set()
        setattr(node, _DOUBLES_ATTRIBUTE, doubles)
        names = doubles

        def coerce(parameters: list[Parameter[Any]]) -> list[Parameter[Any]]:
            # rclpy concatenates what every pre-set callback returns: there is one per node, this one.
            return [
                Parameter(p.name, Parameter.Type.DOUBLE, float(p.value))
                if p.name in names and p.type_ == Parameter.Type.INTEGER
                else p
                for p in parameters
            ]

        node.add_pre_set_parameters_callback(coerce)
    doubles.update(spec.name for spec in specs if isinstance(spec.default, float))


def declare_parameters(node: Node, specs: Sequence[ParamSpec]) -> None:
    """Declare ``specs`` on ``node`` with descriptors and refuse invalid later changes with a reason."""
    _accept_integers_for_doubles(node, specs)
    node.add_on_set_parameters_callback(_validator(specs))
    for spec in specs:
        _declare_one(node, spec)


def param_float(node: Node, name: str) -> float:
    return float(node.get_parameter(name).value)


def param_bool(node: Node, name: str) -> bool:
    return bool(node.get_parameter(name).value)


def param_str(node: Node, name: str) -> str:
    return str(node.get_parameter(name).value)


def periodic_timer(
    node: Node, period_parameter: str, callback: Callable[[], None], callback_group: Any = None
) -> Timer:
    """A timer calling ``callback`` every ``period_parameter`` seconds, following that parameter's changes."""
    timer = node.create_timer(param_float(node, period_parameter), callback, callback_group=callback_group)

    def follow(parameters: list[Parameter[Any]]) -> None:
        for parameter in parameters:
            if parameter.name == period_parameter:
                timer.timer_period_ns = round(float(parameter.value) * 1e9)
                timer.reset()  # the new period counts from now, as for a new timer

    node.add_post_set_parameters_callback(follow)
    return timer


# --- the daemon --------------------------------------------------------------------------------------------


class LinkState(Enum):
    UNKNOWN = "unknown"  # not asked yet
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True)
class Reply(Generic[T]):
    """Outcome of a user request to the daemon: ``value`` when it worked, else ``error`` for the user."""

    value: T | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


class DaemonLink:
    """The node's connection to the daemon: remembers whether it answers, and says so once per change."""

    def __init__(self, node: Node, socket_path: str = "", retry_period_s: float = 2.0) -> None:
        self._node = node
        self._lock = threading.Lock()
        self.retry_period_s = retry_period_s
        self.socket_path = resolve_control_socket(socket_path or None)
        self._client = ControlClient(self.socket_path)
        self.state = LinkState.UNKNOWN
        self.ever_answered = False
        self.last_error = ""
        self._down_since = 0.0
        self._last_attempt = -math.inf

    @classmethod
    def from_parameters(cls, node: Node) -> DaemonLink:
        """A link set up from ``control_socket`` / ``retry_period_s``, following their changes."""
        link = cls(node, param_str(node, "control_socket"), param_float(node, "retry_period_s"))

        def follow(parameters: list[Parameter[Any]]) -> None:
            for parameter in parameters:
                if parameter.name == "control_socket":
                    link.set_socket(str(parameter.value))
                elif parameter.name == "retry_period_s":
                    link.retry_period_s = float(parameter.value)

        node.add_post_set_parameters_callback(follow)
        return link

    def set_socket(self, socket_path: str) -> None:
        """Talk to another socket from now on (a changed ``control_socket`` parameter)."""
        path = resolve_control_socket(socket_path or None)
        with self._lock:
            if path == self.socket_path:
                return
            self._client.close()
            self.socket_path = path
            self._client = ControlClient(path)
            self.state = LinkState.UNKNOWN
            self.ever_answered = False
            self._last_attempt = -math.inf
        self._node.get_logger().info(f"using the husarnet daemon at {path}")

    def close(self) -> None:
        with self._lock:
            self._client.close()

    @property
    def up(self) -> bool:
        return self.state is LinkState.UP

    def call(self, fn: Callable[[ControlClient], T]) -> T | None:
        """``fn(client)`` for periodic work; None when the daemon is down (asked once per retry period)."""
        with self._lock:
            now = time.monotonic()
            if self.state is LinkState.DOWN and now - self._last_attempt < self.retry_period_s:
                return None
        reply = self.request(fn)
        if reply.ok:
            return reply.value
        if self.state is LinkState.UP:
            # The daemon answered but refused: worth a warning, the poll will try again.
            self._node.get_logger().warning(f"husarnet daemon refused a request: {reply.error}")
        return None

    def request(self, fn: Callable[[ControlClient], T]) -> Reply[T]:
        """``fn(client)`` now, whatever the link state; never raises a ClientError."""
        with self._lock:
            client = self._client
            self._last_attempt = time.monotonic()
        try:
            value = fn(client)
        except DaemonUnavailable as exc:
            self._went_down(str(exc))
            return Reply(error=str(exc))
        except ControlError as exc:
            if exc.status == 0:
                # No HTTP status: timeout, broken connection or garbled answer — not a working daemon.
                self._went_down(str(exc))
            else:
                self._answered()
            return Reply(error=str(exc))
        except ClientError as exc:
            self._went_down(str(exc))
            return Reply(error=str(exc))
        self._answered()
        return Reply(value=value)

    def _answered(self) -> None:
        with self._lock:
            previous, self.state = self.state, LinkState.UP
            self.ever_answered = True
            self.last_error = ""
            outage_s = time.monotonic() - self._down_since
        if previous is LinkState.DOWN:
            self._node.get_logger().info(f"husarnet daemon back at {self.socket_path} after {outage_s:.1f} s")
        elif previous is LinkState.UNKNOWN:
            self._node.get_logger().info(f"connected to the husarnet daemon at {self.socket_path}")

    def _went_down(self, reason: str) -> None:
        with self._lock:
            previous, self.state = self.state, LinkState.DOWN
            self.last_error = reason
            if previous is not LinkState.DOWN:
                self._down_since = time.monotonic()
            retry = self.retry_period_s
        if previous is not LinkState.DOWN:
            # The client's reasons already name the socket ("daemon not running (no socket at X): start it
            # with ..."); others (permission, lost connection, timeout) get it added.
            if reason.startswith("daemon not running"):
                text = f"husarnet {reason}"
            else:
                text = f"husarnet daemon not reachable at {self.socket_path}: {reason}"
            self._node.get_logger().warning(f"{text} (retrying every {retry:g} s)")


# --- main() ------------------------------------------------------------------------------------------------


def run_node(
    node_factory: Callable[[], Node], args: list[str] | None = None, *, multi_threaded: bool = False
) -> None:
    """The body of every node's ``main()``: init, spin until shutdown, clean up; exit code 0."""
    try:
        # Before rclpy.init: a SIGTERM from here on either kills the bare process or, once rclpy's handler
        # is installed, shuts it down cleanly; neither leaves a node behind its launch.
        exit_with_parent_if_asked()
    except HusarnetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    # rclpy.init installs SIGINT and SIGTERM handlers that shut the context down: spin then ends.
    rclpy.init(args=args)
    node: Node | None = None
    try:
        try:
            node = node_factory()
        except HusarnetError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(1) from None
        executor = MultiThreadedExecutor() if multi_threaded else SingleThreadedExecutor()
        executor.add_node(node)
        try:
            executor.spin()
        finally:
            executor.shutdown()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        # A second Ctrl-C (launch forwards one per keypress) must not turn the short cleanup into a traceback.
        # (Not done by ignoring SIGINT: that would replace rclpy's own signal handler at the OS level.)
        with contextlib.suppress(KeyboardInterrupt):
            if node is not None:
                close = getattr(node, "close", None)
                if callable(close):
                    close()
                node.destroy_node()
            rclpy.try_shutdown()
