"""A private three-master Redis Cluster on free loopback ports, for the cluster suite.

Each node has its own folder (its `nodes.conf` and its AOF), so a node stopped and started again
comes back as the same member of the cluster with its data.
"""

import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from redis import Redis as SyncRedis
from redis.exceptions import RedisError

from tests.support import free_port

READY_TIMEOUT_S = 60


def _wait(
    check: Callable[[], bool], what: str, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not check():
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what}: redis-server exited with status {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not happen within {READY_TIMEOUT_S} s")
        time.sleep(0.05)


class ClusterNode:
    """One `redis-server --cluster-enabled yes` with AOF, its data in `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.bus_port = free_port()  # the default, port + 10000, may be taken or above 65535
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                str(self.bus_port),
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait(self.answers, f"cluster node on port {self.port}", self.process)

    def client(self) -> SyncRedis:
        return SyncRedis.from_url(self.url, socket_connect_timeout=0.5, socket_timeout=2)

    def answers(self) -> bool:
        try:
            with self.client() as client:
                return bool(client.ping())
        except RedisError:  # refused, or LOADING while the AOF is replayed
            return False

    def cluster_ok(self) -> bool:
        try:
            with self.client() as client:
                return bool(client.execute_command("CLUSTER INFO").get("cluster_state") == "ok")
        except RedisError:
            return False

    def run_id(self) -> str:
        """The server's run id: a new one each time the process starts."""
        with self.client() as client:
            return str(client.info("server")["run_id"])

    def shutdown(self) -> None:
        """SHUTDOWN: the node fsyncs its AOF and exits."""
        assert self.process is not None
        with self.client() as client:
            client.shutdown()
        self.process.wait(READY_TIMEOUT_S)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(READY_TIMEOUT_S)


class PrivateCluster:
    """Three masters, no replicas, every slot assigned; `url` names the first node."""

    def __init__(self, directory: Path, size: int = 3) -> None:
        self.nodes = [ClusterNode(directory / f"node-{n}") for n in range(size)]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{node.port}" for node in self.nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.wait_ok()

    def wait_ok(self) -> None:
        _wait(lambda: all(node.cluster_ok() for node in self.nodes), "cluster_state:ok")

    def restart(self, node: ClusterNode, down_s: float = 0.0) -> None:
        """Shut `node` down cleanly, leave it down `down_s`, start it on the same port and data,
        and wait until the whole cluster reports ok again."""
        node.shutdown()
        time.sleep(down_s)
        node.start()
        self.wait_ok()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@contextmanager
def private_cluster() -> Iterator[PrivateCluster]:
    directory = Path(tempfile.mkdtemp(prefix="metering-cluster-"))
    cluster = PrivateCluster(directory)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)
