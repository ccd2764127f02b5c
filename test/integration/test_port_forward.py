"""The demo's way into a namespace: a loopback port on this machine that leads to a service in a lab host."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from husarnet_ros.testing.netlab import Lab, wait_until
from husarnet_ros.testing.port_forward import PortForward, PortForwardError

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

# Serves one line naming the network namespace it runs in, on the host's underlay address.
SERVER = r"""
import http.server, os, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = os.readlink("/proc/self/ns/net").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), Handler).serve_forever()
"""
PORT = 8099


def test_a_loopback_port_reaches_a_service_inside_a_namespace_and_nothing_else_moves(lab: Lab) -> None:
    host, _ = lab.pair(labels=["service", "other"])
    lab.track(host.popen([sys.executable, "-c", SERVER, host.ipv4, str(PORT)]))
    wait_until(lambda: host.tcp_listening(PORT), 10.0, what="test HTTP server")
    inside = host.run(["readlink", "/proc/self/ns/net"]).stdout.strip()
    ours = subprocess.run(["readlink", "/proc/self/ns/net"], capture_output=True, text=True).stdout.strip()
    assert inside != ours

    forward = PortForward(host.netns, (host.ipv4, PORT))
    try:
        for _ in range(5):  # several connections, one after the other
            with urllib.request.urlopen(forward.url + "/", timeout=5) as answer:
                assert answer.read().decode() == inside
        # The process itself stayed in its own namespace: only the forwarder's connecting thread moved.
        now = subprocess.run(["readlink", "/proc/self/ns/net"], capture_output=True, text=True, check=True)
        assert now.stdout.strip() == ours
    finally:
        forward.close()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(forward.url + "/", timeout=2)


def test_an_unknown_namespace_is_a_clear_error() -> None:
    with pytest.raises(PortForwardError, match="no-such-namespace-hr"):
        PortForward("no-such-namespace-hr", ("198.18.0.1", 80))
