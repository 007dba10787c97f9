"""Slow clients for bench/api_load.py, in raw HTTP/1.1 on asyncio streams: a downloader that reads a little per tick,
and uploaders whose body trickles in, so that each holds its connection (and whatever the API keeps for it) open."""

from __future__ import annotations

import asyncio
import socket
import uuid
from dataclasses import dataclass, field

import httpx

TOKEN = "bench-token"  # the bearer token the benchmarked API is started with
SLOW_READ = 1024  # bytes a slow downloader reads per tick
TICK_S = 0.5


@dataclass
class Tally:
    """Status codes and failures of one kind of client."""

    statuses: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    completed: int = 0  # uploads that became a dataset

    @property
    def server_errors(self) -> int:
        return sum(1 for s in self.statuses if s >= 500)


async def _connect(base: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = base.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # reads nothing ahead for the client
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    return await asyncio.open_connection(sock=sock, limit=2**16)


async def _status(reader: asyncio.StreamReader) -> int:
    line = await reader.readline()
    return int(line.split()[1]) if line.startswith(b"HTTP/1.1 ") else 0


async def slow_download(base: str, path: str, stop: asyncio.Event, started: list, tally: Tally) -> None:
    """GET ``path``, then read SLOW_READ bytes per tick until ``stop``; then hang up."""
    writer = None
    try:
        reader, writer = await _connect(base)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
        status = await asyncio.wait_for(_status(reader), 120)
        tally.statuses.append(status)
        started.append(1)
        while not stop.is_set():
            await reader.read(SLOW_READ)
            await asyncio.sleep(TICK_S)
    except (OSError, TimeoutError, ValueError) as err:
        tally.failures.append(f"{type(err).__name__}: {err}")
    finally:
        if writer is not None:
            writer.transport.abort()


def _multipart(boundary: str, purpose: str, body: bytes) -> tuple[bytes, bytes]:
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{purpose}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"slow.jsonl\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + body, f"\r\n--{boundary}--\r\n".encode()


async def _trickle(request_head: str, body: bytes, base: str, stop: asyncio.Event, started: list) -> int:
    """Send ``request_head`` and ``body`` a little per tick until ``stop``, the rest at once; the status."""
    reader, writer = await _connect(base)
    try:
        writer.write(request_head.encode())
        sent, step = 0, max(1, len(body) // 1000)
        started.append(1)
        while not stop.is_set() and sent < len(body) - step:
            writer.write(body[sent:sent + step])
            await writer.drain()
            sent += step
            await asyncio.sleep(TICK_S)
        writer.write(body[sent:])
        await writer.drain()
        return await asyncio.wait_for(_status(reader), 120)
    finally:
        writer.transport.abort()


async def slow_upload(base: str, client: httpx.AsyncClient, parts: bool, content: bytes, stop: asyncio.Event,
                      started: list, tally: Tally) -> None:
    """One dataset upload whose body trickles in until ``stop``: multipart POST, or part 0 of an upload in parts."""
    try:
        if parts:
            created = await client.post("/v1/uploads", json={"purpose": "domain", "filename": "slow.jsonl",
                                                             "bytes": len(content)})
            tally.statuses.append(created.status_code)
            upload_id = created.json()["id"]
            head = (f"PUT /v1/uploads/{upload_id}/parts/0 HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {TOKEN}"
                    f"\r\nContent-Type: application/octet-stream\r\nContent-Length: {len(content)}\r\n\r\n")
            tally.statuses.append(await _trickle(head, content, base, stop, started))
            done = await client.post(f"/v1/uploads/{upload_id}/complete", json={"part_count": 1})
            tally.statuses.append(done.status_code)
            tally.completed += done.status_code == 201
        else:
            boundary = uuid.uuid4().hex
            body, tail = _multipart(boundary, "domain", content)
            head = (f"POST /v1/datasets HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {TOKEN}\r\n"
                    f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                    f"Content-Length: {len(body) + len(tail)}\r\n\r\n")
            tally.statuses.append(await _trickle(head, body + tail, base, stop, started))
            tally.completed += tally.statuses[-1] == 201
    except (OSError, TimeoutError, ValueError, KeyError, httpx.HTTPError) as err:
        tally.failures.append(f"{type(err).__name__}: {err}")
