"""TLS (NATS_TLS_CA, NATS_TLS_CERT, NATS_TLS_KEY) and user/password (NATS_USER, NATS_PASSWORD):
the saga runs over a server that requires both and a client certificate, with certificates this
test makes."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.connection import Credentials, RefusedByServer, connect
from shared.ops import client
from shared.ops.harness import NatsServer, System
from tests.conftest import unique

pytestmark = pytest.mark.e2e

PASSWORD = "s3cret-for-the-test"


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def make_certificates(directory: Path) -> None:
    """``ca.pem``; ``server.pem`` for 127.0.0.1 and ``client.pem``, each with its ``-key.pem``."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("saga test CA"))
        .issuer_name(_name("saga test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for name, usage in (
        ("server", ExtendedKeyUsageOID.SERVER_AUTH),
        ("client", ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(f"saga test {name}"))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        (directory / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(directory / f"{name}-key.pem", key)


@pytest.fixture(scope="module")
def tls_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[System, Path]]:
    workdir = tmp_path_factory.mktemp("tls")
    certs = workdir / "certs"
    certs.mkdir()
    make_certificates(certs)
    include = workdir / "nats" / "tls.conf"
    include.parent.mkdir()
    include.write_text(
        "tls {\n"
        f'  cert_file: "{certs / "server.pem"}"\n  key_file: "{certs / "server-key.pem"}"\n'
        f'  ca_file: "{certs / "ca.pem"}"\n  verify: true\n'
        "}\n"
        f'authorization {{ users: [ {{ user: "saga", password: "{PASSWORD}" }} ] }}\n'
    )
    server = NatsServer(workdir / "nats", include=include).start()
    env = {
        "NATS_USER": "saga",
        "NATS_PASSWORD": PASSWORD,
        "NATS_TLS_CA": str(certs / "ca.pem"),
        "NATS_TLS_CERT": str(certs / "client.pem"),
        "NATS_TLS_KEY": str(certs / "client-key.pem"),
    }
    system = System(workdir, service_env=env, nats_url=server.url).start()
    yield system, certs
    system.stop()
    server.stop()


def credentials(certs: Path, **overrides: object) -> Credentials:
    fields: dict[str, object] = {
        "user": "saga",
        "password": PASSWORD,
        "tls_ca": certs / "ca.pem",
        "tls_cert": certs / "client.pem",
        "tls_key": certs / "client-key.pem",
    }
    return Credentials(**{**fields, **overrides})  # type: ignore[arg-type]


async def test_the_saga_runs_over_tls_with_a_client_certificate_and_a_password(tls_system: tuple[System, Path]) -> None:
    system, certs = tls_system
    nc = await connect(system.url, credentials(certs))
    try:
        customer, sku = unique("cust"), unique("sku")
        await client.deposit(nc, customer, 5_000)
        await client.restock(nc, sku, 3)
        order_id = unique("o")
        await client.place_order(
            nc.jetstream(), order_id, customer, [{"sku": sku, "quantity": 1, "unit_price_cents": 700}]
        )
        assert (await client.wait_until_terminal(nc, order_id))["status"] == "CONFIRMED"
    finally:
        await nc.close()


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"tls_cert": None, "tls_key": None}, "TLS failed: .*certificate required"),
        ({"tls_ca": None}, "TLS failed: .*CERTIFICATE_VERIFY_FAILED"),  # the server's is not trusted
        ({"password": "wrong"}, "refused the credentials"),
    ],
    ids=["no_client_certificate", "untrusted_server", "wrong_password"],
)
async def test_a_connection_the_server_will_not_take_fails_at_once_saying_why(
    tls_system: tuple[System, Path], overrides: dict[str, object], reason: str
) -> None:
    system, certs = tls_system
    with pytest.raises(RefusedByServer, match=reason):
        await connect(system.url, credentials(certs, **overrides), connect_timeout=2)
