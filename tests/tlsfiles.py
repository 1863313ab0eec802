"""Certificates for TLS tests, made fresh per test: a CA, a server cert, a client cert.

Made with the `openssl` program, or the `cryptography` package where that is
installed instead; the test is skipped (with the reason) when neither is.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_san: str


def _openssl(args: list[str], cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _with_openssl(d: Path) -> Pki:
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(["req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
              "-subj", "/CN=test CA", "-addext", "basicConstraints=critical,CA:TRUE",
              "-addext", "keyUsage=critical,keyCertSign,cRLSign"], d)
    for who, san in (("server", "DNS:localhost,IP:127.0.0.1"), ("client", "DNS:prometheus.test")):
        _openssl(["req", *ec, "-keyout", f"{who}.key", "-out", f"{who}.csr",
                  "-subj", f"/CN={who}"], d)
        usage = "serverAuth" if who == "server" else "clientAuth"
        (d / f"{who}.ext").write_text(f"subjectAltName={san}\nextendedKeyUsage={usage}\n"
                                      "basicConstraints=CA:FALSE\n")
        _openssl(["x509", "-req", "-in", f"{who}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                  "-CAcreateserial", "-out", f"{who}.crt", "-days", "2",
                  "-extfile", f"{who}.ext"], d)
    return Pki(d / "ca.crt", d / "server.crt", d / "server.key", d / "client.crt",
               d / "client.key", "prometheus.test")


def _with_cryptography(d: Path) -> Pki:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("test CA")).issuer_name(name("test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    (d / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    sans = {"server": [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(
        "127.0.0.1"))], "client": [x509.DNSName("prometheus.test")]}
    usages = {"server": ExtendedKeyUsageOID.SERVER_AUTH, "client": ExtendedKeyUsageOID.CLIENT_AUTH}
    for who in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(who)).issuer_name(ca.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=2))
                .add_extension(x509.SubjectAlternativeName(sans[who]), critical=False)
                .add_extension(x509.ExtendedKeyUsage([usages[who]]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        (d / f"{who}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_key(key, d / f"{who}.key")
    return Pki(d / "ca.crt", d / "server.crt", d / "server.key", d / "client.crt",
               d / "client.key", "prometheus.test")


def make_pki(d: Path) -> Pki:
    d.mkdir(parents=True, exist_ok=True)
    if shutil.which("openssl"):
        return _with_openssl(d)
    try:
        import cryptography  # noqa: F401
    except ImportError:
        pytest.skip("neither the openssl program nor the cryptography package is installed")
    return _with_cryptography(d)
