"""A registry token service (the Docker token protocol) for Berth's tests.

GET /token?service=S&scope=repository:NAME:pull,push[&scope=…] with HTTP
Basic credentials answers {"token", "access_token", "expires_in",
"issued_at"}: a JWT signed with ES256 whose header carries the signing
certificate chain (x5c) that the registry checks against its
`rootcertbundle`. Each user is granted the intersection of the actions asked
and the actions the configuration allows them; a wrong password is a 401.

The configuration (JSON, path in argv[1]) is read again on every request, so
a test can change token lifetimes while the service runs:
  port, tls_cert, tls_key, signing_key, signing_cert (PEM files), issuer,
  service, users {name: {password, actions}}, expires_in (seconds told to
  the client), valid_for (seconds until the `exp` claim; may differ from
  expires_in to model a token the registry stops accepting early),
  issued_log (one JSON line per token).
"""

import base64
import datetime
import http.server
import json
import secrets
import ssl
import sys
import threading
import time
import urllib.parse

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization

CONFIG = sys.argv[1]
LOCK = threading.Lock()


def load():
    with open(CONFIG, encoding="utf-8") as f:
        return json.load(f)


def x5c(path):
    """The signing certificate (PEM) as the x5c header wants it: base64 DER."""
    with open(path, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    return [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]


def parse_scope(s):
    # type:name:actions, where the name may itself hold ':' (host:port/…).
    kind, _, rest = s.partition(":")
    name, _, actions = rest.rpartition(":")
    if not kind or not name:
        return None
    return kind, name, [a for a in actions.split(",") if a]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet: the test reads issued_log
        pass

    def reply(self, status, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def denied(self, why):
        self.reply(401, {"errors": [{"code": "UNAUTHORIZED", "message": why}]},
                   [("WWW-Authenticate", 'Basic realm="berth-token"')])

    def do_GET(self):
        cfg = load()
        url = urllib.parse.urlsplit(self.path)
        if url.path != "/token":
            self.reply(404, {"errors": [{"code": "NOT_FOUND", "message": url.path}]})
            return
        q = urllib.parse.parse_qs(url.query)
        if q.get("service", [None])[0] != cfg["service"]:
            self.reply(400, {"errors": [{"code": "INVALID_REQUEST",
                                         "message": "unknown service %r" % q.get("service")}]})
            return
        auth = self.headers.get("Authorization", "")
        if not auth.lower().startswith("basic "):
            self.denied("credentials required")
            return
        try:
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
        except ValueError:
            self.denied("malformed credentials")
            return
        account = cfg["users"].get(user)
        if account is None or not secrets.compare_digest(account["password"], password):
            self.denied("wrong user or password")
            return
        access = []
        for raw in q.get("scope", []):
            for s in raw.split():
                parsed = parse_scope(s)
                if parsed is None:
                    self.reply(400, {"errors": [{"code": "INVALID_REQUEST",
                                                 "message": "malformed scope %r" % s}]})
                    return
                kind, name, actions = parsed
                granted = [a for a in actions if a in account["actions"]]
                if kind == "repository" and granted:
                    access.append({"type": kind, "name": name, "actions": granted})
        now = int(time.time())
        claims = {
            "iss": cfg["issuer"],
            "sub": user,
            "aud": cfg["service"],
            "exp": now + int(cfg["valid_for"]),
            "nbf": now - 1,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": access,
        }
        with open(cfg["signing_key"], "rb") as f:
            key = f.read()
        token = jwt.encode(claims, key, algorithm="ES256",
                           headers={"typ": "JWT", "x5c": x5c(cfg["signing_cert"])})
        with LOCK, open(cfg["issued_log"], "a", encoding="utf-8") as f:
            f.write(json.dumps({"user": user, "scope": q.get("scope", []),
                                "access": access, "exp": claims["exp"]}) + "\n")
        issued = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
        self.reply(200, {"token": token, "access_token": token,
                         "expires_in": int(cfg["expires_in"]),
                         "issued_at": issued.isoformat().replace("+00:00", "Z")})


def main():
    cfg = load()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(cfg["port"])), Handler)
    server.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cfg["tls_cert"], cfg["tls_key"])
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
