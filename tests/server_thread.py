"""An ndmpd server running in a background thread of the test process (own event loop)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable

from ndmpd.context import ServerContext
from tests.blocking_client import NdmpClient
from ndmpd.server import NdmpServer


class ServerThread:
    def __init__(self, config) -> None:
        self.ctx = ServerContext(config)
        self.loop = asyncio.new_event_loop()
        self.server = NdmpServer(self.ctx)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        bound = self.on_loop(self.server.start)
        self.host, self.port = bound[0]

    def on_loop(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` (plain or coroutine function) on the server's loop and return its result."""
        async def call():
            result = fn()
            return await result if asyncio.iscoroutine(result) else result
        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout=30)

    def client(self, version: int = 4) -> NdmpClient:
        client = NdmpClient(self.host, self.port, version)
        client.login("ndmp", "secret")
        return client

    def only_session(self):
        (session,) = list(self.ctx.sessions)
        return session

    def stop(self) -> None:
        async def shutdown():
            self.server.stop()
            await self.server.serve_until_stopped()
        try:
            self.on_loop(shutdown)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
