"""A TCP proxy that can make a server go silent as a lost host does, for fault tests.

A process stopped or a host gone without a goodbye does not close its sockets: requests wait
for answers that never come, until the client's own timeout (or TCP's, many minutes later).
A restart, which closes them, is a different fault, tested with the stack's services."""

from __future__ import annotations

import asyncio
import contextlib

from pipeline.ports import free_port


class SilencingProxy:
    """Relays ``127.0.0.1:<port>`` to ``host:port``. ``silence()``: every open connection stops
    relaying (kept open: nothing answers, nothing closes), and new ones are held unanswered
    too; ``recover()``: new connections are relayed again, as after a failover to a new
    primary, while the ones opened before stay silent, as sockets to a dead host do."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = free_port()
        self._epoch = 0  # connections opened in an epoch <= _silenced_upto relay nothing
        self._silenced_upto = -1
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._closed = asyncio.Event()
        self.connections = 0

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        return self.port

    def silence(self) -> None:
        self._silenced_upto = self._epoch

    def recover(self) -> None:
        self._epoch += 1

    def _silenced(self, epoch: int) -> bool:
        return epoch <= self._silenced_upto

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        self.connections += 1
        epoch = self._epoch
        if self._silenced(epoch):
            await self._closed.wait()  # accepted, never answered
            return
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers.append(up_writer)
        await asyncio.gather(
            self._pipe(reader, up_writer, epoch),
            self._pipe(up_reader, writer, epoch),
            return_exceptions=True,
        )

    async def _pipe(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, epoch: int
    ) -> None:
        while not self._closed.is_set():
            data = await source.read(65536)
            if not data:
                break
            if self._silenced(epoch):
                await self._closed.wait()  # the bytes go nowhere; the socket stays open
                return
            sink.write(data)
            await sink.drain()
        with contextlib.suppress(OSError):
            sink.close()

    async def close(self) -> None:
        self._closed.set()
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            with contextlib.suppress(OSError, RuntimeError):
                writer.close()
