"""The gateway's client to its backends, against raw asyncio servers written for each test.

The servers are FAKES (a few lines of asyncio answering bytes a test chooses): the point is
to send what a real model server would send only when something is wrong (a connection
closed mid-answer, an answer that is no HTTP, an answer framed by the close, more bytes than
the cap) and to count the TCP connections the client opens.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from mlops_autoserve.gateway.backend import (
    BackendClient,
    BackendError,
    ResponseTooLarge,
    Unreachable,
)

from tests.mlops_autoserve.gateway.test_gateway_inprocess import in_loop

HOLD = b"hold"  # the server keeps the connection open and answers nothing
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n{\"predictions\":1}"


class RawServer:
    """Answers each request with ``answer(request bytes)`` (None: hang up; HOLD: say nothing);
    counts connections; keeps what it was sent."""

    def __init__(self, answer: Callable[[bytes], bytes | None], close_after: bool = False) -> None:
        self.answer, self.close_after = answer, close_after
        self.connections = 0
        self.received: list[bytes] = []

    async def __aenter__(self) -> RawServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                body = await reader.readexactly(length)
                self.received.append(head + body)
                out = self.answer(head + body)
                if out is None:  # hang up without a word
                    break
                if out == HOLD:
                    await asyncio.sleep(60)
                writer.write(out)
                await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@in_loop
async def test_requests_reuse_one_keep_alive_connection_and_send_the_body_and_headers():
    async with RawServer(lambda _: OK) as server:
        client = BackendClient(1024)
        for _ in range(5):
            answer = await client.request(server.url, "POST", "/invocations", b"{}",
                                          {"Content-Type": "application/json"})
            assert (answer.status, answer.content_type, answer.body) == (200, "application/json",
                                                                          b'{"predictions":1}')
        assert server.connections == 1
        assert server.received[0].startswith(b"POST /invocations HTTP/1.1\r\n")
        assert b"Content-Type: application/json\r\n" in server.received[0]
        assert server.received[0].endswith(b"\r\n\r\n{}")
        await client.close()


@in_loop
async def test_a_fresh_request_opens_its_own_connection_and_asks_the_backend_to_close_it():
    async with RawServer(lambda _: OK) as server:
        client = BackendClient(1024)
        await client.request(server.url, "POST", "/invocations", b"{}")
        await client.request(server.url, "POST", "/invocations", b"{}", fresh=True)
        assert server.connections == 2
        assert b"Connection: close\r\n" in server.received[1]
        assert client.idle_count() == 1  # the pooled one; the fresh one is not kept
        await client.close()


@in_loop
async def test_a_connection_idle_past_the_keepalive_is_not_reused():
    async with RawServer(lambda _: OK) as server:
        client = BackendClient(1024, keepalive=0.05)
        await client.request(server.url, "GET", "/ping")
        await asyncio.sleep(0.1)
        await client.request(server.url, "GET", "/ping")
        assert server.connections == 2
        await client.close()


@in_loop
async def test_idle_connections_past_the_keepalive_are_closed_by_the_sweep():
    async with RawServer(lambda _: OK) as server:
        client = BackendClient(1024, keepalive=0.05)
        await asyncio.gather(*(client.request(server.url, "GET", "/ping") for _ in range(3)))
        assert client.idle_count() == 3
        await asyncio.sleep(0.1)
        client.close_expired()
        await asyncio.sleep(0.01)  # connection_lost runs on the next loop turn
        assert client.idle_count() == 0 and not client._idle  # nothing kept for that backend
        await client.close()


@in_loop
async def test_a_url_with_a_path_prefix_keeps_it():
    async with RawServer(lambda _: OK) as server:
        client = BackendClient(1024)
        await client.request(server.url + "/ok/", "GET", "/ping")
        assert server.received[0].startswith(b"GET /ok/ping HTTP/1.1\r\n")
        await client.close()


@in_loop
async def test_a_header_value_with_a_line_break_is_not_forwarded():
    async with RawServer(lambda _: OK) as server:
        client = BackendClient(1024)
        await client.request(server.url, "POST", "/invocations", b"{}",
                             {"Accept": "a\r\nX-Injected: 1", "Content-Type": "application/json"})
        assert b"X-Injected" not in server.received[0]
        assert b"Content-Type: application/json" in server.received[0]
        await client.close()


@in_loop
async def test_a_closed_port_and_a_hang_up_before_the_answer_are_unreachable():
    async with RawServer(lambda _: None) as server:
        client = BackendClient(1024)
        with pytest.raises(Unreachable):
            await client.request(server.url, "POST", "/invocations", b"{}")
        url = server.url
    with pytest.raises(Unreachable):
        await client.request(url, "POST", "/invocations", b"{}")
    await client.close()


@in_loop
async def test_an_answer_cut_off_mid_body_is_unreachable_and_its_connection_dropped():
    async with RawServer(lambda _: OK[:-5], close_after=True) as server:
        client = BackendClient(1024)
        with pytest.raises(Unreachable):
            await client.request(server.url, "POST", "/invocations", b"{}")
        assert client.idle_count() == 0
        await client.close()


@in_loop
async def test_an_answer_framed_by_the_close_is_whole():
    answer = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n[1, 2]"
    async with RawServer(lambda _: answer, close_after=True) as server:
        client = BackendClient(1024)
        assert (await client.request(server.url, "GET", "/ping")).body == b"[1, 2]"
        assert client.idle_count() == 0
        await client.close()


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n" + b"7" * 2000,  # declared
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"400\r\n" + b"7" * 1024 + b"\r\n" * 2,  # read so far
])
@in_loop
async def test_an_answer_over_the_cap_is_refused_and_read_no_further(answer):
    async with RawServer(lambda _: answer) as server:
        client = BackendClient(1000)
        with pytest.raises(ResponseTooLarge):
            await client.request(server.url, "POST", "/invocations", b"{}")
        assert client.idle_count() == 0
        await client.close()


@in_loop
async def test_an_answer_that_is_no_http_is_a_backend_error():
    async with RawServer(lambda _: b"SSH-2.0-OpenSSH_9.2\r\n\r\n") as server:
        client = BackendClient(1024)
        with pytest.raises(BackendError) as raised:
            await client.request(server.url, "GET", "/ping")
        assert not isinstance(raised.value, Unreachable)  # not retried: the backend is there, and wrong
        await client.close()


@in_loop
async def test_a_cancelled_request_drops_its_connection():
    async with RawServer(lambda _: HOLD) as server:
        client = BackendClient(1024)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await client.request(server.url, "POST", "/invocations", b"{}")
        assert client.idle_count() == 0
        await client.close()
