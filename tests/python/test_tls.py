"""`floe serve --tls-cert --tls-key` against a CA this test makes: the HTTP API, ingest and
the Python Trino client work over TLS with the CA's certificate verified, plain HTTP gets no
answer, and SIGHUP swaps the certificate for new connections without dropping open ones."""

import datetime
import http.client
import json
import signal
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import requests
import trino
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from trino.auth import JWTAuthentication

from conftest import FLOE, floe, free_port, process_env, stop


def name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca():
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name("floe test CA")).issuer_name(name("floe test CA"))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def make_server_cert(ca_key, ca_cert, cert_path, key_path):
    """A certificate for 127.0.0.1 and localhost signed by the CA; returns its serial."""
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    serial = x509.random_serial_number()
    cert = (x509.CertificateBuilder().subject_name(name("floe")).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(serial)
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    Path(cert_path).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    Path(key_path).write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
    return serial


def peer_serial(conn):
    der = conn.sock.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


def test_https_with_a_ca_of_our_own_and_certificate_reload(tmp_path):
    ca_key, ca_cert = make_ca()
    ca_path = tmp_path / "ca.pem"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    first_serial = make_server_cert(ca_key, ca_cert, cert, key)
    context = ssl.create_default_context(cafile=str(ca_path))

    port = free_port()
    log = open(tmp_path / "serve.log", "a")
    proc = subprocess.Popen([FLOE, "--data-dir", str(tmp_path), "serve", "--listen", f"127.0.0.1:{port}",
                             "--tls-cert", str(cert), "--tls-key", str(key)], stderr=log, env=process_env(tmp_path))
    base = f"https://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"{base}/healthz", timeout=1, context=context)
                break
            except Exception:
                time.sleep(0.05)
        else:
            raise RuntimeError(f"floe serve did not start over TLS; see {tmp_path / 'serve.log'}")

        # The certificate verifies against our CA only.
        try:
            urllib.request.urlopen(f"{base}/healthz", timeout=5, context=ssl.create_default_context())
            raise AssertionError("a certificate from an unknown CA was accepted")
        except urllib.error.URLError as e:
            assert isinstance(e.reason, ssl.SSLCertVerificationError), e
        # Plain HTTP on the TLS port gets no HTTP answer.
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                raise AssertionError(f"plain HTTP answered {r.status}")
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError):
            pass

        # Ingest and the admin API over TLS.
        floe(tmp_path, "tenant", "create", "tls")
        ingest = floe(tmp_path, "token", "issue", "--tenant", "tls", "--role", "ingest").strip()
        analyst = floe(tmp_path, "token", "issue", "--tenant", "tls", "--role", "analyst").strip()
        admin = floe(tmp_path, "token", "issue", "--tenant", "tls", "--role", "admin").strip()
        events = [{"event_id": f"t-{i}", "type": "PageViewed", "user_id": "u", "timestamp": int(time.time()),
                   "payload": {"page": "/"}} for i in range(5)]
        req = urllib.request.Request(f"{base}/v1/events?wait=visible", data=json.dumps(events).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {ingest}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30, context=context) as r:
            assert json.loads(r.read())["accepted"] == 5
        req = urllib.request.Request(f"{base}/v1/keys", data=b'{"role": "ingest"}', method="POST",
                                     headers={"Authorization": f"Bearer {admin}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30, context=context) as r:
            assert r.status == 201

        # The Python Trino client, verifying the certificate; every nextUri it follows is https.
        # (A session of its own: requests lets REQUESTS_CA_BUNDLE override a session's CA.)
        session = requests.Session()
        session.trust_env = False
        session.verify = str(ca_path)
        conn = trino.dbapi.connect(host="127.0.0.1", port=port, user="someone", catalog="floe", schema="tls",
                                   http_scheme="https", http_session=session, auth=JWTAuthentication(analyst))
        cur = conn.cursor()
        cur.execute("SELECT count(*) FROM events")
        assert cur.fetchall() == [[5]]

        # SIGHUP: new connections get the new certificate, an open one goes on.
        open_conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
        open_conn.request("GET", "/healthz")
        assert open_conn.getresponse().read() is not None
        assert peer_serial(open_conn) == first_serial
        second_serial = make_server_cert(ca_key, ca_cert, cert, key)
        proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 5
        while True:
            fresh = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
            fresh.request("GET", "/healthz")
            fresh.getresponse().read()
            if peer_serial(fresh) == second_serial:
                break
            assert time.time() < deadline, "the new certificate was not served"
            time.sleep(0.1)
        open_conn.request("GET", "/healthz")
        assert open_conn.getresponse().status == 200
        assert peer_serial(open_conn) == first_serial

        # A broken certificate file on SIGHUP: the one in use stays.
        cert.write_text("not a certificate")
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        with urllib.request.urlopen(f"{base}/healthz", timeout=5, context=context) as r:
            assert r.status == 200
        assert proc.poll() is None
    finally:
        stop(proc)


def test_an_identity_providers_key_set_over_https(tmp_path):
    """auth.jwks as an https URL: the key set is fetched over TLS, its server's certificate
    verified against the CA the process trusts (SSL_CERT_FILE here), and the provider's tokens
    verify; a server whose certificate the process does not trust gives it no keys (the
    provider is then unavailable: 503, not a verdict on the token)."""
    import http.server
    import threading

    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    ca_key, ca_cert = make_ca()
    ca_path = tmp_path / "ca.pem"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert, key = tmp_path / "idp.pem", tmp_path / "idp.key"
    make_server_cert(ca_key, ca_cert, cert, key)
    signer = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = {**jwt.algorithms.RSAAlgorithm.to_jwk(signer.public_key(), as_dict=True), "kid": "idp-1"}
    body = json.dumps({"keys": [jwk]}).encode()

    class KeySet(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), KeySet)
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(str(cert), str(key))
    httpd.socket = server_side.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{httpd.server_address[1]}/jwks.json"

    def serve(trusted):
        port = free_port()
        env = {**process_env(tmp_path), "SSL_CERT_FILE": str(ca_path if trusted else tmp_path / "none.pem")}
        proc = subprocess.Popen([FLOE, "--data-dir", str(tmp_path), "--set", f"auth.jwks={url}", "serve", "--listen",
                                 f"127.0.0.1:{port}"], stderr=open(tmp_path / "serve.log", "a"), env=env)
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                return proc, port
            except Exception:
                time.sleep(0.05)
        proc.kill()
        raise RuntimeError("floe serve did not start")

    try:
        floe(tmp_path, "tenant", "create", "idp")
        time.sleep(1.05 - time.time() % 1)
        now = int(time.time())
        token = jwt.encode({"tenant": "idp", "role": "viewer", "iat": now, "exp": now + 300, "jti": "j-1"},
                           signer, algorithm="RS256", headers={"kid": "idp-1"})
        for trusted, expected in ((True, 200), (False, 503)):
            proc, port = serve(trusted)
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/whoami",
                                             headers={"Authorization": f"Bearer {token}"})
                try:
                    with urllib.request.urlopen(req, timeout=30) as r:
                        status = r.status
                except urllib.error.HTTPError as e:
                    status = e.code
                assert status == expected, (trusted, status)
            finally:
                stop(proc)
    finally:
        httpd.shutdown()
