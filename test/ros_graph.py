"""Helpers for tests that run a real ROS 2 graph on loopback.

Isolation (a domain id of its own, loopback discovery, the shipped DDS profile) comes from the
``ros_env`` fixture of ``ros_fixtures.py``; these helpers take its environment. The node under
test runs as users start it, the installed ``semret_node`` console command with
``--ros-args``, in a subprocess whose log is written to a file the tests can read.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import rclpy
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile

from semret_ros.ros.qos import SERVICE_QOS

VENV_BIN = Path(sys.executable).parent


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


class Graph:
    """A test-side rclpy node in its own context, spun on a background thread."""

    def __init__(self, env: dict[str, str]) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=int(env["ROS_DOMAIN_ID"]))
        self.node = rclpy.create_node("semret_test", context=self.context)
        self._executor = SingleThreadedExecutor(context=self.context)
        self._executor.add_node(self.node)
        self._thread = threading.Thread(target=self._executor.spin, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._thread.join(5)

    def collect(
        self,
        msg_type: type,
        topic: str,
        qos: QoSProfile | int = 10,
        matched_timeout: float | None = 10.0,
    ) -> list[Any]:
        """Subscribe and return the (live) list every received message is appended to.

        Waits (up to ``matched_timeout``; None: no wait) until the subscription is matched with
        a publisher, so the node counts it as a subscriber before the test sends a frame.
        """
        received: list[Any] = []
        matched = threading.Event()

        def on_matched(info: Any) -> None:
            if info.current_count > 0:
                matched.set()

        self.node.create_subscription(
            msg_type,
            topic,
            received.append,
            qos,
            event_callbacks=SubscriptionEventCallbacks(matched=on_matched),
        )
        if matched_timeout is not None and not matched.wait(matched_timeout):
            raise AssertionError(f"no publisher matched on {topic} within {matched_timeout} s")
        return received

    def wait_for_subscriber(self, publisher: Any, timeout: float = 10.0) -> None:
        wait_until(
            lambda: publisher.get_subscription_count() > 0,
            timeout,
            f"a subscriber on {publisher.topic_name}",
        )

    def call(self, srv_type: type, name: str, request: Any, timeout: float = 10.0) -> Any:
        """Call a service (KEEP_ALL, as documented for clients) and return its response."""
        client = self.node.create_client(srv_type, name, qos_profile=SERVICE_QOS)
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                raise AssertionError(f"service {name} not available after {timeout} s")
            done = threading.Event()
            future = client.call_async(request)
            future.add_done_callback(lambda _future: done.set())
            if not done.wait(timeout):
                raise AssertionError(f"no response from {name} within {timeout} s")
            return future.result()
        finally:
            self.node.destroy_client(client)


class NodeProcess:
    """An installed node command (``semret_node`` by default) in a subprocess, its log in a file."""

    def __init__(
        self,
        args: Sequence[str],
        env: dict[str, str],
        log_path: Path,
        command: str = "semret_node",
    ) -> None:
        executable = VENV_BIN / command
        if not executable.exists():
            raise AssertionError(f"{executable} is missing: run `make build` first")
        env = {**env, "RCUTILS_LOGGING_BUFFERED_STREAM": "0", "PYTHONUNBUFFERED": "1"}
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [str(executable), "--ros-args", *args],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_for_log(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        """The first match of ``pattern`` in the log; fails early if the node exits."""

        def found() -> re.Match[str] | None:
            match = re.search(pattern, self.log())
            if match is None and self.process.poll() is not None:
                raise AssertionError(
                    f"semret_node exited ({self.process.returncode}) before logging "
                    f"{pattern!r}; log:\n{self.log()}"
                )
            return match

        return wait_until(found, timeout, f"{pattern!r} in the node's log")

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"semret_node still running after {timeout} s; log:\n{self.log()}"
            ) from None
        finally:
            self._log.close()

    def stop(self, timeout: float = 20.0) -> int:
        """SIGINT (Ctrl-C), as a user stops it; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            return self.wait_exit(timeout)
        except AssertionError:
            self.process.kill()
            raise
