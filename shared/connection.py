"""How every process of the saga reaches NATS: one server or a cluster, from one ``NATS_URL``.

``NATS_URL`` may list several servers, comma-separated (``nats://a:4222,nats://b:4222``).
nats-py takes a list and fails over between them (and to servers the cluster gossips), but
given the comma-separated string as one URL it refuses it: every service and tool connects
through here, so none of them can forget the split.
"""

from __future__ import annotations

import os
import ssl
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nkeys
from nats.aio.client import Client

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


def servers(url: str) -> list[str]:
    """The servers ``url`` lists, in order; ValueError if it lists none."""
    found = [part.strip() for part in url.split(",") if part.strip()]
    if not found:
        raise ValueError(f"no NATS server in {url!r}")
    return found


def nats_url_from_env() -> str:
    """``NATS_URL``, or the local default: the ``--nats-url`` default of every tool."""
    return os.environ.get("NATS_URL") or DEFAULT_NATS_URL


async def connect(url: str, credentials: Credentials | None = None, **options: Any) -> Client:
    """Connect to the servers ``url`` lists, as ``credentials`` (default: from the environment,
    which is what every operator tool uses); ``options`` go to ``nats.connect`` as they are.

    Credentials or a certificate the server refuses end the first connect at once with
    RefusedByServer and the reason: retrying cannot fix them (nats-py would retry forever
    with ``max_reconnect_attempts=-1``). Once connected, every error goes to ``error_cb``; without
    one of the caller's, permission violations are printed to stderr, so a tool run with too
    small a role says what it was refused instead of timing out in silence."""
    creds = Credentials.from_env() if credentials is None else credentials
    error_cb: Callable[[Exception], Awaitable[None]] = options.pop("error_cb", None) or _print_denials
    connected = False

    async def on_error(exc: Exception) -> None:
        reason = refused(exc)
        if reason and not connected:
            raise _Refused(reason)
        await error_cb(exc)

    try:
        nc = await nats.connect(servers=servers(url), error_cb=on_error, **creds.options(), **options)
    except _Refused as exc:
        raise RefusedByServer(f"{url} as {creds.describe()}: {exc}") from None
    except ssl.SSLError as exc:
        raise RefusedByServer(f"{url} as {creds.describe()}: TLS failed: {exc}") from None
    connected = True
    return nc


class _Refused(Exception):
    pass


class RefusedByServer(Exception):
    """The server will not take this connection as configured: say so and stop, do not retry."""


async def _print_denials(exc: Exception) -> None:
    if denied(exc):
        print(f"NATS refused: {exc}", file=sys.stderr)


class CredentialsError(ValueError):
    """The credential settings are inconsistent or name a file that cannot be read."""


@dataclass(frozen=True)
class Credentials:
    """Who this process is to NATS: an nkey, or a user and password, and TLS; or nobody.

    Read from ``NATS_NKEY_SEED`` (a seed file, as ``saga-auth init`` writes), ``NATS_USER`` and
    ``NATS_PASSWORD``, ``NATS_TLS_CA``, ``NATS_TLS_CERT`` and ``NATS_TLS_KEY``, and
    ``NATS_INBOX_PREFIX``. With none set a
    process connects as it always has, to an open server (docs/operations.md, "Trust boundary").
    """

    nkey_seed: Path | None = None
    user: str | None = None
    password: str | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    inbox_prefix: str | None = None
    """Where replies to this process's requests arrive. A role's permissions let only that role
    subscribe to its prefix (``_INBOX_client``, ``_INBOX_order_svc``...: shared.ops.auth); None:
    nats-py's ``_INBOX``, which only the operator may read."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, inbox_prefix: str | None = None) -> Credentials:
        """From the environment; ``NATS_INBOX_PREFIX`` there overrides ``inbox_prefix``."""
        env = os.environ if environ is None else environ

        def path(name: str) -> Path | None:
            raw = (env.get(name) or "").strip()
            if not raw:
                return None
            found = Path(raw).expanduser()
            if not found.is_file():
                raise CredentialsError(f"{name}={raw}: no such file")
            return found

        creds = cls(
            nkey_seed=path("NATS_NKEY_SEED"),
            user=env.get("NATS_USER") or None,
            password=env.get("NATS_PASSWORD") or None,
            tls_ca=path("NATS_TLS_CA"),
            tls_cert=path("NATS_TLS_CERT"),
            tls_key=path("NATS_TLS_KEY"),
            inbox_prefix=env.get("NATS_INBOX_PREFIX") or inbox_prefix,
        )
        if creds.nkey_seed:
            _check_seed(creds.nkey_seed)
        if creds.nkey_seed and creds.user:
            raise CredentialsError("NATS_NKEY_SEED and NATS_USER both set: give one way to authenticate")
        if bool(creds.user) != bool(creds.password):
            raise CredentialsError("NATS_USER and NATS_PASSWORD go together")
        if bool(creds.tls_cert) != bool(creds.tls_key):
            raise CredentialsError("NATS_TLS_CERT and NATS_TLS_KEY go together")
        return creds

    @property
    def tls(self) -> bool:
        return bool(self.tls_ca or self.tls_cert)

    def describe(self) -> str:
        """How this process authenticates, for a log line: never the secret itself."""
        who = f"nkey {self.nkey_seed}" if self.nkey_seed else f"user {self.user}" if self.user else "no credentials"
        return who + (", TLS" if self.tls else "")

    def options(self) -> dict[str, Any]:
        """These credentials as ``nats.connect`` options."""
        options: dict[str, Any] = {}
        if self.inbox_prefix:
            options["inbox_prefix"] = self.inbox_prefix
        if self.nkey_seed:
            options["nkeys_seed"] = str(self.nkey_seed)
        if self.user:
            options["user"], options["password"] = self.user, self.password
        if self.tls:
            context = ssl.create_default_context(cafile=str(self.tls_ca) if self.tls_ca else None)
            if self.tls_cert and self.tls_key:
                context.load_cert_chain(str(self.tls_cert), str(self.tls_key))
            options["tls"] = context
        return options


def _check_seed(path: Path) -> None:
    try:
        nkeys.from_seed(path.read_bytes().strip())
    except OSError as exc:
        raise CredentialsError(f"NATS_NKEY_SEED={path}: {exc.strerror}") from None
    except Exception:  # nkeys raises its own errors, and binascii's, for what is not a seed
        raise CredentialsError(f"NATS_NKEY_SEED={path}: not an nkey seed (saga-auth init writes them)") from None


def refused(exc: BaseException) -> str | None:
    """Why the server will never take this connection as configured (bad credentials, an
    untrusted certificate), or None for a failure worth retrying (NATS away)."""
    text = str(exc)
    if isinstance(exc, nats.errors.AuthorizationError) or "authorization violation" in text.lower():
        return "the server refused the credentials (Authorization Violation)"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {exc}"
    if isinstance(exc, (nats.errors.SecureConnRequiredError, nats.errors.SecureConnWantedError)):
        return f"TLS mismatch: {text}"
    return None


def denied(exc: BaseException) -> str | None:
    """The text of a permissions violation (it names the subject refused), or None for any other error.

    nats-py reports a denied publish or subscribe only here, through ``error_cb``; the publish
    itself returns as if sent (a request then times out)."""
    text = str(exc)
    return text if "permissions violation" in text.lower() else None
