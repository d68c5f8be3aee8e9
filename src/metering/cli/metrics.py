"""Metrics commands: serve this host's metrics (a host without the web app), and empty the
multiprocess folder before a host's processes start."""

import asyncio
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import typer
from redis.exceptions import RedisError

from metering.cli.app import app
from metering.cli.common import console, fail
from metering.ops import redis_client
from metering.ops.logs import get_logger
from metering.ops.metrics import CONTENT_TYPE, StreamCollector, render
from metering.ops.settings import get_settings
from metering.usage.stream_stats import read_backlog

metrics = typer.Typer(help="Prometheus metrics of this host.", no_args_is_help=True)
app.add_typer(metrics, name="metrics")
log = get_logger(__name__)
DIRECTORY = typer.Option(None, "--dir", help="Folder to empty (default: PROMETHEUS_MULTIPROC_DIR).")


@metrics.command("serve")
def serve(
    port: int = typer.Option(9464, help="Port to listen on."),
    host: str = typer.Option("0.0.0.0", help="Address to bind."),
) -> None:
    """Serve GET /metrics: the processes writing to this host's PROMETHEUS_MULTIPROC_DIR (the
    workers), plus the usage streams' gauges. Runs until interrupted."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        fail("PROMETHEUS_MULTIPROC_DIR is not set: there is nothing of other processes to serve")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != "/metrics":
                self.send_error(404)
                return
            body = render(_stream_collector())
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return  # one line per scrape is noise

    server = ThreadingHTTPServer((host, port), Handler)
    console.print(f"serving metrics on http://{host}:{server.server_address[1]}/metrics")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _stream_collector() -> StreamCollector | None:
    settings = get_settings()

    async def read() -> StreamCollector:
        redis = await redis_client.open_client(
            settings.redis_url, socket_timeout=2, socket_connect_timeout=2
        )
        try:
            backlog = await read_backlog(
                redis, settings.metering_redis_prefix, settings.metering_usage_shards
            )
            return backlog.collector()
        finally:
            await redis.aclose()

    try:
        return asyncio.run(read())
    except (RedisError, OSError) as error:
        log.warning("stream gauges left out: Redis did not answer", error=str(error))
        return None


@metrics.command("reset-dir")
def reset_dir(
    directory: Path | None = DIRECTORY,
) -> None:
    """Create the multiprocess folder, or delete the metric files earlier runs left in it.

    Files of processes still running on this host are kept, so it is safe to run beside them
    (honcho starts the release step with the others). Processes of other containers sharing the
    folder are not visible here: run it before those start (compose's release service does)."""
    target = directory or (Path(d) if (d := os.environ.get("PROMETHEUS_MULTIPROC_DIR")) else None)
    if target is None:
        fail("give --dir or set PROMETHEUS_MULTIPROC_DIR")
    target.mkdir(parents=True, exist_ok=True)
    removed = 0
    for stale in target.glob("*.db"):
        pid = stale.stem.rsplit("_", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and _running(int(pid)):
            continue
        stale.unlink(missing_ok=True)
        removed += 1
    console.print(f"{target}: removed {removed} metric file(s)")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True
