"""The stand-in put together, and serving it: on the running loop or from a thread of its own."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator

from aiohttp import web

from tests.fakes.gitlab.faults import FaultInjection
from tests.fakes.gitlab.pipelines import PipelineRoutes


class FakeGitlab(FaultInjection, PipelineRoutes):
    """In-memory GitLab (projects, refs, tokens, trigger tokens, pipelines) served as an aiohttp app."""

    def app(self) -> web.Application:
        """The aiohttp application (routes everything under /api/v4 itself, on the raw path, so that
        URL-encoded project paths like ``ml%2Frecsys`` arrive intact)."""
        app = web.Application(middlewares=[self._middleware])
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        return app

    @contextlib.asynccontextmanager
    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
        """Serve on the running loop; yields the base URL (``http://127.0.0.1:PORT``) to hand to
        ``gitlab.Gitlab``. Requests still held by a timeout fault are dropped on exit."""
        self._closing = asyncio.Event()
        self._closing_loop = asyncio.get_running_loop()
        runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
            addr = runner.addresses[0]
            self.url = f"http://{addr[0]}:{addr[1]}"
            yield self.url
        finally:
            self._closing.set()
            await runner.cleanup()
            self.url = None

    @contextlib.contextmanager
    def serve_in_thread(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
        """Serve from a background thread with its own event loop (for synchronous tests, or for tests
        whose loop must not be blocked); yields the base URL. Stops the loop and joins the thread on exit."""
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        stop: asyncio.Event | None = None
        failure: list[BaseException] = []
        url_box: list[str] = []

        async def main() -> None:
            nonlocal stop
            stop = asyncio.Event()
            try:
                async with self.serve(host, port) as url:
                    url_box.append(url)
                    ready.set()
                    await stop.wait()
            except BaseException as exc:  # noqa: BLE001 - reported to the caller below
                failure.append(exc)
                ready.set()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(main())
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        thread = threading.Thread(target=run, name="fake-gitlab", daemon=True)
        thread.start()
        ready.wait(10)
        if failure:
            thread.join(5)
            raise failure[0]
        if not url_box:
            raise RuntimeError("fake GitLab did not start within 10 s")
        try:
            yield url_box[0]
        finally:
            assert stop is not None
            loop.call_soon_threadsafe(stop.set)
            thread.join(10)
