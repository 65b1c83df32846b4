"""TLS in front of a loopback TCP port, as a terminating proxy fronts a server.

The local ClickHouse engine (clickhouse-local inside chdb-core) can open only plain HTTP and TCP
listeners, so the secure local stack serves HTTPS this way: the engine listens on an internal
loopback port, and this front takes the configured port with the local CA's server certificate.
Clients see what they would see in front of a real ClickHouse server with `https_port`.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from pathlib import Path

CHUNK = 65536


class TlsFront:
    """Accepts TLS on 127.0.0.1:`port` (0: any free one, see .port) and relays each connection to
    127.0.0.1:`target_port`, in a thread of its own until close()."""

    def __init__(self, cert: Path, key: Path, target_port: int, port: int = 0) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        self.target_port = target_port
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="tls-front", daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._relay, "127.0.0.1", port, ssl=self.context), self.loop).result(10)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _relay(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        try:
            target_in, target_out = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:  # the server behind is not up (yet): the client sees a closed connection
            client_out.close()
            return

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(CHUNK):
                    sink.write(data)
                    await sink.drain()
            except (OSError, ssl.SSLError):
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(client_in, target_out), pipe(target_in, client_out))

    def close(self) -> None:
        async def shutdown() -> None:
            self.server.close()
            relays = asyncio.all_tasks() - {asyncio.current_task()}
            for task in relays:
                task.cancel()
            await asyncio.gather(*relays, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()
