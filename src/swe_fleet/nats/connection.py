"""Connections to NATS: connecting (bounded, finite reconnects), closing (one way, never raising),
and :func:`open_jetstream`, which connects, ensures the streams a caller needs and gives every
set-up step one bound, so that "JetStream did not answer" means the same everywhere.

A server that denies a client a subject (its role may not publish there, docs/security.md) says
so asynchronously and drops the message, so the client's request only times out: every
connection keeps what its server denied it (:func:`permission_denial`), and the places that
wait on an answer (a publish, a set-up step, a fetch) turn that timeout into
:class:`~swe_fleet.errors.NatsPermissionDenied`, naming the subject and the credentials used.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import weakref
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import nats
import nats.aio.client
import nats.errors
import nats.js.errors
import structlog

from swe_fleet._tasks import cancel_and_wait
from swe_fleet.errors import NatsPermissionDenied, NatsRefused, NatsUnreachable
from swe_fleet.nats.auth import NatsAuth, refuse_credentials_in_url
from swe_fleet.nats.policy import PublishPolicy
from swe_fleet.nats.streams import StreamRequirement, ensure_stream

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: What a set-up step raises when NATS answers but JetStream does not: no answer in time, or no
#: responder on its API (nats-py reports the latter as a 503).
_NO_JETSTREAM = (TimeoutError, nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError)
#: What closing a client can raise; :func:`close_nats` swallows it (the client is closed all the same).
_CLOSE_ERRORS = (TimeoutError, OSError, nats.errors.Error)


#: How nats-server words a refusal (``-ERR 'Authorization Violation'``); not "Authentication
#: Timeout", which a slow client gets and a retry may cure.
_REFUSALS = ("authorization violation", "user authentication revoked", "authentication expired")
#: TLS errors of a connection that went away (a restarting server), not a refusal.
_TLS_DROPS = (ssl.SSLEOFError, ssl.SSLZeroReturnError)


#: How nats-server words a denied subject: ``Permissions Violation for Publish to "subject"``.
_DENIED = re.compile(r"permissions violation for (\w+) to \"?([^\"\s']+)", re.IGNORECASE)
#: A denied stream creation (as nats-py reports it, lower case): the stream is missing.
_STREAM_CREATE = "$js.api.stream.create."
#: Per connection: (subject, action, credentials used) of each denial, oldest first.
_DENIALS: weakref.WeakKeyDictionary[Any, list[tuple[str, str, str]]] = weakref.WeakKeyDictionary()


def denial_mark(nc: Any) -> int:
    """How many denials ``nc`` has had so far: pass it as ``since`` to see only later ones."""
    return len(_DENIALS.get(nc, []))


def permission_denial(
    nc: Any, url: str, subject: str | None = None, *, since: int = 0
) -> NatsPermissionDenied | None:
    """The last subject the server denied ``nc`` after the first ``since`` denials (``subject``
    only, when given), as the error to raise, or None."""
    for denied, action, used in reversed(_DENIALS.get(nc, [])[since:]):
        # nats-py lowercases the server's error: the subject comes back in lower case.
        if subject is None or denied == subject.lower():
            creating = denied.startswith(_STREAM_CREATE)
            why = (
                f"the stream {denied.removeprefix(_STREAM_CREATE).upper()} does not exist yet and "
                "this role may not create it: the role that owns it does (the dispatcher creates "
                "COUNCIL_REQUESTS, a job or the dispatcher AGENT_RESPONSES); start that first"
                if creating
                else "the role of these credentials may not (docs/security.md lists what each "
                "role may do); use the credentials of a role that may (NATS_NKEY, NATS_CREDS, "
                "NATS_USER ...)"
            )
            denied = subject or denied
            return NatsPermissionDenied(
                f"NATS at {url} denied this client ({used}) permission to {action.lower()} "
                f"{'to' if action.lower() == 'publish' else 'on'} {denied}: {why}",
                url=url,
                denied_subject=denied,
            )
    return None


def _refusal(exc: BaseException, url: str, auth: NatsAuth) -> str | None:
    """Why the server refused this client, with the fix, or None for any other error."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"the certificate of NATS at {url} is not trusted ({exc.verify_message}); set NATS_CA "
            "(--nats-ca) to the CA bundle that signed it"
        )
    if isinstance(exc, ssl.SSLError) and not isinstance(exc, _TLS_DROPS):
        return (
            f"TLS with NATS at {url} failed ({exc.reason or exc}); check NATS_CA, NATS_CERT and "
            "NATS_KEY (--nats-ca, --nats-cert, --nats-key)"
        )
    text = str(exc).lower()
    if any(word in text for word in _REFUSALS):
        return (
            f"NATS at {url} refused the credentials ({str(exc).strip()}); this client used "
            f"{auth.describe(url)}: check NATS_USER and NATS_PASSWORD_FILE, NATS_TOKEN_FILE, "
            "NATS_NKEY or NATS_CREDS (and their --nats-* options)"
        )
    if "secure connection" in text or "tls" in text:
        return (
            f"NATS at {url} and this client disagree on TLS ({str(exc).strip()}): use a tls:// URL "
            "or NATS_CA when the server requires TLS"
        )
    return None


async def connect_nats(
    url: str, *, timeout_s: float = 5.0, name: str = "swe-fleet", auth: NatsAuth | None = None
) -> Any:
    """Connect with finite reconnects; bounded by ``timeout_s``. Credentials and TLS come from
    ``auth`` (default: this process's NATS_* variables, :mod:`swe_fleet.nats.auth`).

    Raises:
        NatsRefused: the server refused the credentials or the TLS handshake failed (at once,
            not after ``timeout_s``: retrying cannot help).
        NatsUnreachable: no connection within the bound (the URL is named).
        ConfigError: the NATS_* settings are contradictory or name unreadable files.
    """
    refuse_credentials_in_url(url, setting="the NATS URL (--nats-url, NATS_URL or publish.nats_url)")
    auth = NatsAuth.from_env() if auth is None else auth
    refused: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    nc: Any = nats.aio.client.Client()  # nats-py annotates its float timeouts as int

    async def _on_error(exc: Exception) -> None:
        denied = _DENIED.search(str(exc))
        if denied is not None:
            _DENIALS.setdefault(nc, []).append((denied.group(2).lower(), denied.group(1), auth.describe(url)))
        why = _refusal(exc, url, auth)
        if why is not None and not refused.done():
            refused.set_result(why)
        log.warning("nats.error", url=url, error=str(exc))

    connecting = asyncio.ensure_future(
        nc.connect(
            servers=[url],
            name=name,
            connect_timeout=min(timeout_s, 2.0),
            allow_reconnect=True,
            max_reconnect_attempts=60,  # finite: -1 makes connect() block forever
            reconnect_time_wait=0.5,
            error_cb=_on_error,
            **auth.connect_options(url),
        )
    )
    try:
        done, _ = await asyncio.wait(
            {connecting, refused}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
        if connecting in done:
            connecting.result()  # raises what connect() raised
            return nc
        if refused in done:
            raise NatsRefused(refused.result(), url=url)
        raise TimeoutError(f"no connection within {timeout_s:.0f} s")
    except NatsRefused:
        await _abandon(connecting, nc)
        raise
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        await _abandon(connecting, nc)
        why = _refusal(exc, url, auth)
        if why is not None:
            raise NatsRefused(why, url=url) from None
        raise NatsUnreachable(
            f"cannot reach NATS at {url} within {timeout_s:.0f} s ({type(exc).__name__}: {exc}); "
            "check the URL (publish.nats_url / --nats-url) and that nats-server runs with -js",
            url=url,
        ) from None
    except Exception as exc:  # e.g. the nkeys library refusing a seed: still one line, no socket left
        await _abandon(connecting, nc)
        raise NatsUnreachable(
            f"connecting to NATS at {url} failed ({type(exc).__name__}: {exc}); this client used "
            f"{auth.describe(url)}",
            url=url,
        ) from None
    except BaseException:  # cancelled: stop the attempt too, then let the cancellation through
        await _abandon(connecting, nc)
        raise


async def _abandon(connecting: asyncio.Future[Any], nc: Any) -> None:
    """Stop a connection attempt and close its client (bounded; raises nothing of its own, and
    never swallows a cancellation of the caller)."""
    await cancel_and_wait({connecting}, timeout_s=2.0)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(nc.close(), 2.0)


async def close_nats(nc: Any, *, drain: bool = True, timeout_s: float = 10.0) -> None:
    """Close a client (bounded); never raises. Nothing to do for None or a closed client.

    Args:
        drain: drain a connected client first (its pending publishes are flushed); False closes
            at once (a consumer: what it did not ack is delivered again anyway).
    """
    if nc is None or nc.is_closed:
        return
    if drain:
        try:
            if nc.is_connected:
                await asyncio.wait_for(nc.drain(), timeout_s)
                return
        except _CLOSE_ERRORS as exc:
            log.debug("nats.drain_failed", error=f"{type(exc).__name__}: {exc}")
    try:
        await asyncio.wait_for(nc.close(), timeout_s)
    except _CLOSE_ERRORS as exc:
        # nats-py flushes its reconnect buffer into the dead socket when closed mid-reconnect
        # (ConnectionResetError); the client is closed all the same.
        log.debug("nats.close_failed", error=f"{type(exc).__name__}: {exc}")


@dataclass
class JetStreamConnection:
    """A connection, its JetStream context, and the bound of every set-up step.

    Attributes:
        bound_s: how long one set-up step (a stream check, binding a consumer, opening a
            bucket) may take before JetStream counts as not answering.
    """

    nc: Any
    js: Any
    url: str
    bound_s: float

    @contextlib.asynccontextmanager
    async def setting_up(self) -> AsyncIterator[None]:
        """Set-up steps run inside: any failure closes the connection, and a timeout (or no
        responder on JetStream's API: a server without ``-js``) is
        :class:`~swe_fleet.errors.NatsUnreachable` (NATS answered, JetStream did not).
        """
        mark = denial_mark(self.nc)
        try:
            yield
        except _NO_JETSTREAM as exc:
            await close_nats(self.nc, drain=False)
            denied = permission_denial(self.nc, self.url, since=mark)
            if denied is not None:
                raise denied from None
            raise NatsUnreachable(
                f"NATS at {self.url} answered but JetStream did not within {self.bound_s:.0f} s "
                f"({type(exc).__name__}); start nats-server with -js",
                url=self.url,
            ) from None
        except BaseException:
            await close_nats(self.nc, drain=False)
            raise

    async def bounded(self, step: Awaitable[T]) -> T:
        """Await one set-up step within :attr:`bound_s` (TimeoutError past it)."""
        return await asyncio.wait_for(step, self.bound_s)

    async def close(self, *, drain: bool = True, timeout_s: float = 10.0) -> None:
        """See :func:`close_nats`."""
        await close_nats(self.nc, drain=drain, timeout_s=timeout_s)


async def open_jetstream(
    url: str,
    *,
    name: str = "swe-fleet",
    connect_timeout_s: float = 5.0,
    js_timeout_s: float | None = None,
    streams: Sequence[StreamRequirement] = (),
    policy: PublishPolicy | None = None,
) -> JetStreamConnection:
    """Connect to ``url`` and ensure ``streams`` (see :func:`~swe_fleet.nats.streams.ensure_stream`).

    Each set-up step is bounded by twice ``connect_timeout_s``; run further steps of your own
    inside :meth:`JetStreamConnection.setting_up` to give them the same meaning.

    Args:
        js_timeout_s: the JetStream context's request timeout (default ``connect_timeout_s``).
        policy: the retry policy of the publishers on these streams (their window must cover it).

    Raises:
        NatsUnreachable: no connection, or JetStream did not answer, within the bounds.
        StreamConfigMismatch: a stream exists with an incompatible config.
    """
    nc = await connect_nats(url, timeout_s=connect_timeout_s, name=name)
    conn = JetStreamConnection(
        nc=nc,
        js=nc.jetstream(timeout=connect_timeout_s if js_timeout_s is None else js_timeout_s),
        url=url,
        bound_s=connect_timeout_s * 2,
    )
    async with conn.setting_up():
        for stream in streams:
            await conn.bounded(
                ensure_stream(
                    conn.js,
                    stream.name,
                    stream.subjects,
                    stream.duplicate_window_s,
                    policy=policy,
                    retention=stream.retention,
                )
            )
    return conn
