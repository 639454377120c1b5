"""~/query between two hosts: the old full-image answer vs the matches-only default vs small images.

Simulates a robot and a laptop on one machine: two network namespaces joined by a veth pair,
each side with its own /dev/shm, /etc/machine-id and hostname, so Fast DDS cannot take its
shared-memory path between them (as between two real machines) and every answer crosses the
veth over UDP. The robot side runs ``semret_node`` (the shipped model) fed by ``semret-play
--shapes`` (640x480 camera frames, over shared memory as on a robot); the laptop side runs N
client processes that each fire M concurrent ~/query calls. For each response form it prints
calls/s, p50 and p95 latency (from firing to answer), answered/asked, the serialized response
size (the largest seen) and the bytes that crossed the veth (both ways: requests, DDS
overhead, retransmissions and the copies of each response that every other client receives),
side by side. ``--wifi`` adds a second pass over a shaped link (tc netem 50 Mbit/s + 5 ms
each way; tbf 50 Mbit/s without added delay where the kernel lacks netem), with fewer calls
(``--wifi-calls``).

Discovery: both sides use the shipped Fast DDS profile (config/fastdds_shm.xml: shared memory +
UDPv4) and ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET (multicast on the veth); ``--static-peers``
also sets ROS_STATIC_PEERS to the other side's address (what Wi-Fi without multicast needs).

Needs root, iproute2 (``ip``, ``tc``) and util-linux (``unshare``); the namespaces are removed
at exit.

    sudo .venv/bin/python benchmarks/bench_network.py [--clients 8] [--calls 50] [--wifi]
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
SUBNET = "10.213.0"
ROBOT_ADDRESS, LAPTOP_ADDRESS = f"{SUBNET}.1", f"{SUBNET}.2"
_IMAGES = {"want_similarity": True, "want_mask": True}
FORMS: dict[str, tuple[str, dict]] = {
    "default": ("new default: matches only", {}),
    "quarter_png": (
        "similarity + mask as PNG at image_scale 0.25",
        {**_IMAGES, "image_scale": 0.25, "compress_images": True},
    ),
    "png": ("similarity + mask as PNG", {**_IMAGES, "compress_images": True}),
    "quarter": ("similarity + mask at image_scale 0.25", {**_IMAGES, "image_scale": 0.25}),
    "old": ("old: full 32FC1 similarity + mono8 mask", _IMAGES),
}
"""Response forms and the Query request fields that ask for them, measured smallest first: a
big answer's retransmissions can outlast its round on a shaped link and would load the next."""
PHRASES = ("red circle", "blue square", "green triangle", "yellow star", "purple ring")
"""What the clients ask for: shapes-world names, so answers carry matches."""


# --------------------------------------------------------------------------- laptop side
def run_client(form: str, calls: int, start_at: float, timeout: float) -> None:
    """One client process: wait for ~/query, fire ``calls`` requests at once, time each.

    Prints its figures as one JSON line and leaves without tearing rclpy down: Fast DDS's
    participant teardown spun for many minutes here while a reliable writer still held data for
    the shaped link, and the figures are out by then.
    """
    from semret_ros.ros.dds import apply_default_dds_profile

    apply_default_dds_profile()
    import rclpy
    from rclpy.serialization import serialize_message
    from semret_ros.srv import Query

    from semret_ros.ros.qos import SERVICE_QOS

    rclpy.init()
    node = rclpy.create_node(f"bench_client_{os.getpid()}")
    client = node.create_client(Query, "/semret/query", qos_profile=SERVICE_QOS)
    client.wait_for_service(timeout_sec=60.0)
    time.sleep(max(0.0, start_at - time.time()))
    fields = FORMS[form][1]
    done: dict[int, float] = {}
    futures = []
    begin = time.monotonic()
    for index in range(calls):
        future = client.call_async(Query.Request(text=PHRASES[index % len(PHRASES)], **fields))
        future.add_done_callback(lambda _f, i=index: done.setdefault(i, time.monotonic()))
        futures.append(future)
    deadline = begin + timeout
    while len(done) < calls and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
    answered = [i for i, f in enumerate(futures) if f.done() and f.result().success]
    size = len(serialize_message(futures[answered[0]].result())) if answered else 0
    result = {
        "latencies_ms": [(done[i] - begin) * 1000.0 for i in answered],
        "asked": calls,
        "seconds": max((done[i] - begin for i in answered), default=timeout),
        "bytes": size,
    }
    print(json.dumps(result), flush=True)
    os._exit(0)


def run_laptop_round(form: str, clients: int, calls: int, timeout: float) -> dict:
    """On the laptop host: ``clients`` processes at once; their results, merged."""
    # Every client has started (rclpy's import takes ~1 s of CPU each) and discovered the
    # service by then, so the calls of all clients go out together.
    start_at = time.time() + 4.0 + clients
    procs = [
        subprocess.Popen(
            [
                *(sys.executable, __file__, "--client", form, "--calls", str(calls)),
                *("--start-at", str(start_at), "--timeout", str(timeout)),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(clients)
    ]
    outputs = [p.communicate()[0].strip().splitlines() for p in procs]
    missing = {"latencies_ms": [], "asked": calls, "seconds": timeout, "bytes": 0}
    results = [json.loads(lines[-1]) if lines else missing for lines in outputs]
    return {
        "latencies_ms": [v for r in results for v in r["latencies_ms"]],
        "asked": sum(r["asked"] for r in results),
        "seconds": max(r["seconds"] for r in results),
        "bytes": max(r["bytes"] for r in results),
    }


def run_probe(timeout: float) -> int:
    """On the laptop host: 0 once ~/query answers success (a frame was processed)."""
    from semret_ros.ros.dds import apply_default_dds_profile

    apply_default_dds_profile()
    import rclpy
    from semret_ros.srv import Query

    from semret_ros.ros.client import call

    rclpy.init()
    node = rclpy.create_node("bench_probe")
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            response, _ = call(node, Query, "/semret/query", Query.Request(text="a circle"), 10.0)
            if response is not None and response.success:
                return 0
            time.sleep(1.0)
        return 1
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


# --------------------------------------------------------------------------- the two hosts
@dataclass
class Host:
    """A simulated machine: a network namespace, its end of the veth, its own machine id."""

    netns: str
    veth: str
    address: str
    hostname: str
    machine_id: Path

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run on this host: its netns, a private /dev/shm, machine id and hostname."""
        bind_id = (
            f"mount --bind {self.machine_id} /etc/machine-id; "
            if Path("/etc/machine-id").exists()
            else ""
        )
        script = (
            f"set -e; mount -t tmpfs -o size=512m tmpfs /dev/shm; {bind_id}"
            f'hostname {self.hostname}; exec "$@"'
        )
        return [
            *("ip", "netns", "exec", self.netns, "unshare", "--mount", "--uts"),
            *("--propagation", "private", "sh", "-c", script, "sh", *argv),
        ]

    def settle(self, quiet_bytes_per_s: int = 100_000, limit_s: float = 120.0) -> bool:
        """Wait until the link is quiet, so one round's leftovers (a reliable writer still
        repeating a big answer to clients that are gone) do not load the next round; False
        when it is still busy after ``limit_s``."""
        deadline = time.monotonic() + limit_s
        quiet, last = 0, sum(self.counters())
        while quiet < 2 and time.monotonic() < deadline:
            time.sleep(1.0)
            now = sum(self.counters())
            quiet = quiet + 1 if now - last < quiet_bytes_per_s else 0
            last = now
        return quiet >= 2

    def counters(self) -> tuple[int, int]:
        """(tx, rx) bytes of this host's veth end."""
        values = []
        for name in ("tx_bytes", "rx_bytes"):
            path = f"/sys/class/net/{self.veth}/statistics/{name}"
            out = subprocess.run(
                ["ip", "netns", "exec", self.netns, "cat", path],
                capture_output=True,
                text=True,
                check=True,
            )
            values.append(int(out.stdout))
        return values[0], values[1]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class Network:
    """Two hosts joined by a veth pair; removed (namespaces, links, shaping) by ``close``."""

    def __init__(self, scratch: Path) -> None:
        tag = os.getpid() % 100000
        self.hosts: list[Host] = []
        self._created: list[str] = []
        for side, address in (("robot", ROBOT_ADDRESS), ("laptop", LAPTOP_ADDRESS)):
            machine_id = scratch / f"{side}.machine-id"
            machine_id.write_text(os.urandom(16).hex() + "\n")
            self.hosts.append(
                Host(
                    f"semret_bn_{side}_{tag}",
                    f"sbn{side[0]}{tag}",
                    address,
                    f"semret-{side}",
                    machine_id,
                )
            )
        robot, laptop = self.hosts
        for host in self.hosts:
            _ip("netns", "add", host.netns)
            self._created.append(host.netns)
        _ip("link", "add", robot.veth, "type", "veth", "peer", "name", laptop.veth)
        for host in self.hosts:
            _ip("link", "set", host.veth, "netns", host.netns)
            _ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", host.veth)
            _ip("-n", host.netns, "link", "set", "lo", "up")
            _ip("-n", host.netns, "link", "set", host.veth, "up")

    def shape(self) -> str:
        """Shape both directions like Wi-Fi; returns what was applied, for the label."""
        for netem in (True, False):
            qdisc = (
                ["netem", "rate", "50mbit", "delay", "5ms"]
                if netem
                else ["tbf", "rate", "50mbit", "burst", "64kb", "limit", "3mb"]
            )
            try:
                for host in self.hosts:
                    command = ["tc", "qdisc", "replace", "dev", host.veth, "root", *qdisc]
                    subprocess.run(
                        ["ip", "netns", "exec", host.netns, *command],
                        check=True,
                        capture_output=True,
                        text=True,
                    )
            except subprocess.CalledProcessError as error:
                if not netem:
                    raise SystemExit(f"cannot shape the link: {error.stderr.strip()}") from None
                continue
            if netem:
                return "Wi-Fi-like: netem 50 Mbit/s + 5 ms each way"
            return "Wi-Fi-like: tbf 50 Mbit/s each way (this kernel has no netem: no added delay)"
        raise AssertionError("unreachable")

    def close(self) -> None:
        while self._created:
            subprocess.run(["ip", "netns", "del", self._created.pop()], capture_output=True)


def _stop(process: subprocess.Popen) -> None:
    """SIGINT to the process group this script started (node + player), then SIGKILL."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)
    except ProcessLookupError:
        pass


def _percentile(values: list[float], q: float) -> str:
    import numpy as np

    return f"{np.percentile(values, q):.0f}" if values else "-"


def _row(link: str, label: str, result: dict, wire: int) -> str:
    latencies = result["latencies_ms"]
    answered = len(latencies)
    ratio = f"{answered}/{result['asked']}"
    return (
        f"{link:<12}{label:<46}{ratio:>10}{answered / result['seconds']:>9.1f}"
        f"{_percentile(latencies, 50):>8}{_percentile(latencies, 95):>8}"
        f"{result['bytes']:>14,}{wire / 1e6:>10.1f}{wire / max(answered, 1) / 1e6:>15.2f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8, help="client processes per form")
    parser.add_argument("--calls", type=int, default=50, help="concurrent calls per client")
    parser.add_argument("--forms", nargs="+", default=list(FORMS), choices=list(FORMS))
    parser.add_argument("--rate", type=float, default=2.0, help="camera frames per second")
    parser.add_argument("--timeout", type=float, default=90.0, help="per client, seconds")
    parser.add_argument(
        "--wifi", action="store_true", help="also measure over a shaped 50 Mbit/s link"
    )
    parser.add_argument(
        "--wifi-calls", type=int, default=5, help="concurrent calls per client on the shaped link"
    )
    parser.add_argument(
        "--static-peers", action="store_true", help="also set ROS_STATIC_PEERS on both sides"
    )
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--laptop-round", help=argparse.SUPPRESS)
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        run_client(args.client, args.calls, args.start_at, args.timeout)
    if args.laptop_round:
        round_ = run_laptop_round(args.laptop_round, args.clients, args.calls, args.timeout)
        print(json.dumps(round_))
        return 0
    if args.probe:
        return run_probe(args.timeout)

    if os.geteuid() != 0:
        raise SystemExit("bench_network.py creates network namespaces: run it as root")
    missing = [tool for tool in ("ip", "tc", "unshare") if shutil.which(tool) is None]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: apt-get install iproute2 util-linux")

    from semret_ros.ros.dds import apply_default_dds_profile

    profile = apply_default_dds_profile() or os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE", "")
    domain = os.environ.get("ROS_DOMAIN_ID") or str(random.randint(30, 100))
    base_env = {
        **os.environ,
        "ROS_DOMAIN_ID": domain,
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    scratch = Path(tempfile.mkdtemp(prefix="semret_bench_network_"))
    network = Network(scratch)
    atexit.register(network.close)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    robot, laptop = network.hosts

    def env_for(peer: Host) -> dict[str, str]:
        return {**base_env, "ROS_STATIC_PEERS": peer.address} if args.static_peers else base_env

    robot_script = (
        f"{VENV_BIN / 'semret_node'} --ros-args --params-file {ROOT / 'config' / 'semret.yaml'} "
        f"-r image:=/camera/image_raw > {scratch / 'node.log'} 2>&1 & "
        f"{VENV_BIN / 'semret-play'} --shapes 4 --rate {args.rate} --loop "
        f"> {scratch / 'play.log'} 2>&1 & wait"
    )
    robot_side = subprocess.Popen(
        robot.command(["sh", "-c", robot_script]), env=env_for(laptop), start_new_session=True
    )
    atexit.register(_stop, robot_side)

    def on_laptop(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            laptop.command([sys.executable, __file__, *extra]),
            env=env_for(robot),
            capture_output=True,
            text=True,
        )

    try:
        if on_laptop("--probe", "--timeout", "180").returncode != 0:
            print((scratch / "node.log").read_text()[-3000:], file=sys.stderr)
            raise SystemExit("the laptop side got no answer from ~/query within 180 s")
        discovery = "SUBNET multicast" + (" + ROS_STATIC_PEERS" if args.static_peers else "")
        print(
            "two hosts: network namespaces joined by a veth pair, each with its own /dev/shm, "
            f"machine-id and hostname; Fast DDS profile {profile or 'none'}; discovery "
            f"{discovery}; ROS_DOMAIN_ID={domain}\nrobot: semret_node (shipped model) + "
            f"semret-play --shapes, 640x480 at {args.rate:g} Hz; laptop: {args.clients} client "
            "processes, each firing its calls at once"
        )
        print(
            f"{'link':<12}{'response form':<46}{'answered':>10}{'calls/s':>9}{'p50 ms':>8}"
            f"{'p95 ms':>8}{'bytes/answer':>14}{'wire MB':>10}{'wire MB/answer':>15}"
        )
        links = [("veth", args.calls)] + ([("wifi", args.wifi_calls)] if args.wifi else [])
        for link, calls in links:
            if link == "wifi":
                print(f"-- {network.shape()}; {args.clients} x {calls} calls per form")
            else:
                print(f"-- unshaped veth; {args.clients} x {calls} calls per form")
            for form in args.forms:
                if not robot.settle():
                    print("   (the link was still busy with the previous round's traffic)")
                before = sum(robot.counters())
                done = on_laptop(
                    *("--laptop-round", form, "--clients", str(args.clients)),
                    *("--calls", str(calls), "--timeout", str(args.timeout)),
                )
                if done.returncode != 0 or not done.stdout.strip():
                    raise SystemExit(f"the {form} round failed:\n{done.stderr[-3000:]}")
                wire = sum(robot.counters()) - before
                result = json.loads(done.stdout.strip().splitlines()[-1])
                print(_row(link, FORMS[form][0], result, wire), flush=True)
    finally:
        _stop(robot_side)
        network.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
