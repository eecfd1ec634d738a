"""An asyncio client of Storm's Pacemaker protocol, for tests, tools and `pmcluster bench`.

One TCP connection; requests are pipelined (up to `max_in_flight`, Storm's 100) and replies
matched by `message_id`, so they may arrive in any order. A reader task owns the socket's read
side; a lost connection fails every waiting request with `NodeUnavailable`.

`authenticate_digest(name, user, password)` runs Storm's DIGEST handshake (SASL DIGEST-MD5
with the secret derived from the JAAS `PacemakerDigest` user and password) before any request;
`authenticate_gssapi(service, host, keytab=..., principal=...)` runs Storm's KERBEROS one
(SASL GSSAPI, RFC 4752, with mutual authentication; needs gssapi).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from types import TracebackType
from typing import Any

from pmcluster.errors import AuthError, NodeUnavailable, NotAuthorized, ProtocolError
from pmcluster.storm.auth import (
    SASL_COMPLETE_REQUEST,
    SASL_TOKEN_MESSAGE_REQUEST,
    control_code,
    control_message,
    sasl_token,
    sasl_token_message,
)
from pmcluster.storm.codec import (
    DEFAULT_MAX_FRAME_SIZE,
    FrameDecoder,
    HBMessage,
    HBMessageData,
    HBPulse,
    encode_frame,
)
from pmcluster.storm.codec import HBServerMessageType as T
from pmcluster.storm.sasl_digest import client_response, storm_digest_password

__all__ = ["StormClient"]

_MAX_ID = 2**31 - 1
_MAX_SASL_LEGS = 10  # server tokens accepted in one GSSAPI exchange (Kerberos needs 2)


class StormClient:
    """`async with StormClient(host, port) as c: await c.send_pulse("/a/b", b"x")`."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float = 10.0,
        max_in_flight: int = 100,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    ) -> None:
        self.host = host
        self.port = port
        self.node = f"{host}:{port}"
        self.timeout = timeout
        self._slots = asyncio.Semaphore(max_in_flight)
        self._decoder = FrameDecoder(max_frame_size)
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._waiting: dict[int, asyncio.Future[HBMessage]] = {}
        self._next_id = 0
        self._failure: str | None = None
        self._out: list[bytes] = []  # requests of this loop iteration, sent in one write
        self._auth_inbox: asyncio.Queue[HBMessage | None] = asyncio.Queue()

    async def connect(self) -> None:
        try:
            reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), self.timeout
            )
        except (OSError, TimeoutError) as exc:
            raise NodeUnavailable(self.node, f"connect failed: {exc!r}") from exc
        self._failure = None
        self._auth_inbox = asyncio.Queue()
        self._reader_task = asyncio.get_running_loop().create_task(self._read_loop(reader))

    async def close(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
            self._reader_task = None
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
            self._writer = None
        self._fail_all("client closed")

    async def __aenter__(self) -> StormClient:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ------------------------------------------------------------ the eight operations

    async def send_pulse(self, path: str, data: bytes) -> None:
        await self.request(T.SEND_PULSE, HBMessageData(pulse=HBPulse(path, data)))

    async def get_pulse(self, path: str) -> bytes | None:
        reply = await self.request(T.GET_PULSE, HBMessageData(path=path))
        if reply.data is None or reply.data.pulse is None:
            raise ProtocolError("GET_PULSE_RESPONSE without a pulse")
        return reply.data.pulse.details

    async def exists(self, path: str) -> bool:
        reply = await self.request(T.EXISTS, HBMessageData(path=path))
        if reply.data is None or reply.data.boolval is None:
            raise ProtocolError("EXISTS_RESPONSE without boolval")
        return reply.data.boolval

    async def get_all_nodes_for_path(self, path: str) -> list[str]:
        reply = await self.request(T.GET_ALL_NODES_FOR_PATH, HBMessageData(path=path))
        if reply.data is None or reply.data.nodes is None:
            raise ProtocolError("GET_ALL_NODES_FOR_PATH_RESPONSE without nodes")
        return list(reply.data.nodes.pulseIds)

    async def get_all_pulse_for_path(self, path: str) -> list[tuple[str, bytes]]:
        """(full path, data) of every pulse at or under `path`."""
        reply = await self.request(T.GET_ALL_PULSE_FOR_PATH, HBMessageData(path=path))
        if reply.data is None or reply.data.records is None:
            raise ProtocolError("GET_ALL_PULSE_FOR_PATH_RESPONSE without records")
        return [(p.id, p.details or b"") for p in reply.data.records.pulses]

    async def delete_path(self, path: str) -> None:
        await self.request(T.DELETE_PATH, HBMessageData(path=path))

    async def delete_pulse_id(self, path: str) -> None:
        await self.request(T.DELETE_PULSE_ID, HBMessageData(path=path))

    async def create_path(self, path: str) -> None:
        await self.request(T.CREATE_PATH, HBMessageData(path=path))

    # ------------------------------------------------------------ authentication

    async def authenticate_digest(self, name: str, user: str, password: str) -> None:
        """Storm's DIGEST handshake; call right after `connect`, before any request.

        `name` is the client's name (Storm: the topology), `user`/`password` the JAAS
        `PacemakerDigest` values. Raises `AuthError` when the server refuses (it closes the
        connection) or does not prove it knows the secret.
        """
        writer = self._writer
        if writer is None:
            raise NodeUnavailable(self.node, "not connected")
        sasl_user = base64.b64encode(name.encode()).decode("ascii")
        sasl_password = storm_digest_password(user, password)
        writer.write(encode_frame(control_message(SASL_TOKEN_MESSAGE_REQUEST)))
        challenge = sasl_token(await self._next_auth_frame(T.SASL_MESSAGE_TOKEN))
        response, rspauth = client_response(challenge, sasl_user, sasl_password)
        writer.write(encode_frame(sasl_token_message(response)))
        if sasl_token(await self._next_auth_frame(T.SASL_MESSAGE_TOKEN)) != rspauth:
            raise AuthError(f"{self.node} sent a wrong rspauth: it does not know the secret")
        done = await self._next_auth_frame(T.CONTROL_MESSAGE)
        if control_code(done) != SASL_COMPLETE_REQUEST:
            raise AuthError(f"{self.node} sent CONTROL {control_code(done)}, not complete")

    async def authenticate_gssapi(
        self,
        service: str = "pacemaker",
        host: str | None = None,
        *,
        keytab: str | None = None,
        principal: str | None = None,
        authzid: str = "",
    ) -> None:
        """Storm's KERBEROS handshake (SASL GSSAPI); call right after `connect`.

        Targets `service@host` (host: the connected host unless given, as Storm uses the name
        listed in `pacemaker.servers`); credentials from `keytab`/`principal` (JAAS
        `PacemakerClient`) or the default credential cache. Raises `AuthError` when the server
        refuses (it closes the connection) or fails mutual authentication.
        """
        from pmcluster.auth.kerberos import KerberosInitiator, gssapi_module
        from pmcluster.storm.sasl_gssapi import GssapiClient

        writer = self._writer
        if writer is None:
            raise NodeUnavailable(self.node, "not connected")

        def start() -> tuple[Any, bytes]:  # blocking: keytab login and TGS request
            initiator = KerberosInitiator(keytab=keytab, principal=principal, service_name=service)
            started = initiator.start(host or self.host, sasl=True)
            return started.ctx, started.token

        ctx, token = await asyncio.to_thread(start)
        client = GssapiClient(ctx, gssapi_module().exceptions.GSSError, authzid)
        writer.write(encode_frame(sasl_token_message(token)))
        for _ in range(_MAX_SASL_LEGS):
            message = await self._next_auth_frame(T.SASL_MESSAGE_TOKEN, T.CONTROL_MESSAGE)
            if message.type == T.CONTROL_MESSAGE:
                code = control_code(message)
                if code != SASL_COMPLETE_REQUEST or not client.complete:
                    raise AuthError(f"{self.node} sent CONTROL {code} before the exchange ended")
                return
            writer.write(encode_frame(sasl_token_message(client.respond(sasl_token(message)))))
        raise AuthError(f"{self.node}: GSSAPI exchange longer than {_MAX_SASL_LEGS} legs")

    async def _next_auth_frame(self, *mtypes: T) -> HBMessage:
        try:
            message = await asyncio.wait_for(self._auth_inbox.get(), self.timeout)
        except TimeoutError:
            raise AuthError(f"{self.node}: no authentication reply in {self.timeout}s") from None
        if message is None:
            raise AuthError(f"{self.node} closed the connection: authentication refused")
        if message.type not in mtypes:
            raise AuthError(f"{self.node} sent type {message.type} during authentication")
        return message

    # ------------------------------------------------------------ plumbing

    async def request(self, mtype: T, data: HBMessageData | None) -> HBMessage:
        """Send one request with a fresh message id and wait for its reply.

        Raises `NotAuthorized` on NOT_AUTHORIZED, `NodeUnavailable` when the connection is
        lost or the reply does not come within `timeout`, `ProtocolError` on a wrong reply type.
        """
        async with self._slots:
            writer = self._writer
            if writer is None or self._failure is not None:
                raise NodeUnavailable(self.node, self._failure or "not connected")
            self._next_id = self._next_id % _MAX_ID + 1
            mid = self._next_id
            future: asyncio.Future[HBMessage] = asyncio.get_running_loop().create_future()
            self._waiting[mid] = future
            try:
                if not self._out:
                    asyncio.get_running_loop().call_soon(self._flush)
                self._out.append(encode_frame(HBMessage(mtype, data, mid)))
                await writer.drain()
                reply = await asyncio.wait_for(future, self.timeout)
            except TimeoutError:
                raise NodeUnavailable(self.node, f"no reply within {self.timeout}s") from None
            except OSError as exc:
                raise NodeUnavailable(self.node, f"send failed: {exc!r}") from exc
            finally:
                self._waiting.pop(mid, None)
        if reply.type == T.NOT_AUTHORIZED:
            raise NotAuthorized(f"{mtype.name} refused by {self.node}")
        if reply.type != mtype + 1:
            raise ProtocolError(f"reply type {reply.type} to {mtype.name}")
        return reply

    def _flush(self) -> None:
        out, self._out = self._out, []
        if out and self._writer is not None and not self._writer.is_closing():
            self._writer.write(b"".join(out))

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        reason = "connection closed by the server"
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                for reply in self._decoder.feed(chunk):
                    if reply.type in (T.CONTROL_MESSAGE, T.SASL_MESSAGE_TOKEN):
                        self._auth_inbox.put_nowait(reply)
                        continue
                    future = self._waiting.get(-1 if reply.message_id is None else reply.message_id)
                    if future is not None and not future.done():
                        future.set_result(reply)
        except (OSError, ProtocolError) as exc:
            reason = f"connection failed: {exc!r}"
        self._fail_all(reason)

    def _fail_all(self, reason: str) -> None:
        self._failure = reason
        self._auth_inbox.put_nowait(None)
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(NodeUnavailable(self.node, reason))
        self._waiting.clear()
