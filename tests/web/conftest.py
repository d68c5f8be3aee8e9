"""The app in-process over httpx's ASGI transport, and a local stand-in for Stripe's API."""

import json
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from metering.ledger.reconcile import find_violations
from metering.ops.db import session_scope
from metering.ops.settings import Settings
from metering.web import create_app
from tests.stripe import deliveries
from tests.web.helpers import API_TOKEN, FRONTEND_URL, SECRET_KEY, Queue, StandIn, serve


@pytest.fixture
def stripe_api() -> Iterator[StandIn]:
    stand_in = StandIn(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            form = dict(parse_qsl(self.rfile.read(length).decode()))
            stand_in.requests.append(
                {"path": self.path, "headers": dict(self.headers), "form": form}
            )
            if stand_in.error is not None:
                status, body = stand_in.error
            else:
                status, body = 200, deliveries.fixture("checkout_session")
                session_id = deliveries.new_id("cs")
                body.update(
                    id=session_id,
                    url=f"https://checkout.stripe.com/c/pay/{session_id}",
                    client_reference_id=form.get("client_reference_id"),
                    metadata={
                        "userId": form["metadata[userId]"],
                        "credits": form["metadata[credits]"],
                    },
                )
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Request-Id", "req_standin")
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    stand_in.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield stand_in
    server.shutdown()
    server.server_close()


@pytest.fixture
def queue() -> Queue:
    return Queue()


@pytest.fixture
def settings(database_url: str, stripe_api: StandIn) -> Settings:
    return Settings(
        database_url=database_url,
        stripe_secret_key=SecretStr(SECRET_KEY),
        stripe_webhook_secret=SecretStr(deliveries.WEBHOOK_SECRET),
        stripe_api_base=stripe_api.url,
        frontend_url=FRONTEND_URL,
        metering_api_token=SecretStr(API_TOKEN),
        stripe_credit_packs={"starter": 5_000},
    )


@pytest.fixture
async def client(settings: Settings, queue: Queue) -> AsyncIterator[httpx.AsyncClient]:
    async for client in serve(create_app(settings, enqueue=queue)):
        yield client


@pytest.fixture(autouse=True)
async def reconciled(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[None]:
    yield
    async with session_scope(sessions) as session:
        assert await find_violations(session) == []
