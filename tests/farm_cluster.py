"""A real multi-node Ray cluster on 127.0.0.1 for the farm tests and benchmark: a head and worker nodes, each
a `ray start --block` process in its own process group, so one node can be killed (SIGKILL to its group: the
raylet dies, its actors with it) and the whole cluster stopped without touching any other Ray on this machine.
Small: no dashboard, 1-2 CPUs and 80 MB of object store per node."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agent_bundles import REPO, free_port

RAY = str(Path(sys.executable).with_name("ray"))
OBJECT_STORE_BYTES = 80 * 1024 * 1024


class LocalRayCluster:
    def __init__(self, root: Path):
        self.root = root.resolve()
        # Ray's session folder holds AF_UNIX sockets (at most 107 bytes of path): keep it short, not under the
        # test's tmp path (deeper under pytest-xdist)
        self.ray_dir = Path(tempfile.mkdtemp(prefix="edge-ray-"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: dict[str, subprocess.Popen] = {}
        self.env = dict(os.environ, PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0")

    def _start(self, name: str, *args: str) -> None:
        log = open(self.root / f"{name}.log", "ab")
        self.nodes[name] = subprocess.Popen(
            [RAY, "start", "--block", "--node-ip-address", "127.0.0.1", "--object-store-memory",
             str(OBJECT_STORE_BYTES), "--dashboard-agent-listen-port", str(free_port()),
             "--disable-usage-stats", *args],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.root)

    def start(self, workers: dict[str, int], timeout: float = 120.0) -> LocalRayCluster:
        """Start the head, then `workers` (node name -> CPUs), one at a time (nodes started together race for
        ports); return when every node says it is up."""
        self._start("head", "--head", "--port", str(self.port), "--num-cpus", "1", "--include-dashboard", "false",
                    "--temp-dir", str(self.ray_dir), "--node-name", "head")
        deadline = time.monotonic() + timeout
        self._wait("head", deadline)
        for name, cpus in workers.items():
            self._start(name, "--address", self.address, "--num-cpus", str(cpus), "--node-name", name)
            self._wait(name, deadline)
        return self

    def _wait(self, name: str, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.nodes[name].poll() is not None:
                raise RuntimeError(f"ray node {name} exited: {self.log(name)}")
            if "Ray runtime started" in self.log(name):
                return
            time.sleep(0.2)
        raise RuntimeError(f"ray node {name} did not start in time: {self.log(name)}")

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")[-3000:]

    def kill(self, name: str) -> None:
        """SIGKILL a node's whole process group: like pulling a lab host's power cord."""
        proc = self.nodes.pop(name)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:  # it exited already
            pass
        proc.wait()

    def stop(self) -> None:
        """Kill every node this cluster started, workers first (their actor processes exit with their raylet)."""
        for name in [n for n in self.nodes if n != "head"] + (["head"] if "head" in self.nodes else []):
            self.kill(name)
        shutil.rmtree(self.ray_dir, ignore_errors=True)
