#!/usr/bin/env python3
"""Scenario 9: serve's admin API while the Parachute hub hangs.

Runs the release binary against a fake hub written here (standard library
only: RS256 keys and signatures in pure Python), which can accept requests
for its JWKS or revocation list and never answer them. Four phases, each a
fresh `serve` on a folder vault, 10 clients on an authenticated route
(`/runner/jobs`) and 2 on `/healthz`, each request on a new connection:

  baseline   the hub answers
  hung       the hub hangs from the start (nothing was ever loaded)
  hung-late  keys and list loaded, then the hub hangs
  bad-kid    keys loaded; 10 more clients send tokens with an unknown kid
             while the forced reload they trigger hangs

Writes one JSON file per phase (latencies in ms, status counts) to OUT_DIR.

    hub_bench.py RUNNER OUT_DIR SECONDS
"""

import base64
import hashlib
import http.client
import http.server
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time

SMALL_PRIMES = [p for p in range(3, 2000) if all(p % d for d in range(2, int(p ** 0.5) + 1))]


def probable_prime(n):
    for p in SMALL_PRIMES:
        if n % p == 0:
            return n == p
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for _ in range(24):
        a = secrets.randbelow(n - 3) + 2
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def prime(bits):
    while True:
        p = secrets.randbits(bits) | (1 << (bits - 1)) | (1 << (bits - 2)) | 1
        if (p - 1) % 65537 and probable_prime(p):
            return p


class Key:
    def __init__(self, bits=2048):
        while True:
            p, q = prime(bits // 2), prime(bits // 2)
            if p != q and (p * q).bit_length() == bits:
                break
        self.n, self.e = p * q, 65537
        lam = (p - 1) * (q - 1) // gcd(p - 1, q - 1)
        self.d = pow(self.e, -1, lam)

    def sign(self, msg):
        digest_info = bytes.fromhex("3031300d060960864801650304020105000420")
        t = digest_info + hashlib.sha256(msg).digest()
        k = (self.n.bit_length() + 7) // 8
        em = b"\x00\x01" + b"\xff" * (k - len(t) - 3) + b"\x00" + t
        return pow(int.from_bytes(em, "big"), self.d, self.n).to_bytes(k, "big")


def gcd(a, b):
    while b:
        a, b = b, a % b
    return a


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(key, kid, claims):
    head = b64(json.dumps({"alg": "RS256", "typ": "JWT", "kid": kid}).encode())
    body = b64(json.dumps(claims).encode())
    signing = f"{head}.{body}".encode()
    return f"{head}.{body}.{b64(key.sign(signing))}"


class Hub:
    """JWKS and revocation list; `hang` makes requests wait for `release`."""

    def __init__(self, key):
        self.key = key
        self.hang_jwks = False
        self.hang_revocation = False
        self.release = threading.Event()
        self.fetches = {"jwks": 0, "revocation": 0}
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path == "/.well-known/jwks.json":
                    hub.fetches["jwks"] += 1
                    if hub.hang_jwks:
                        hub.release.wait()
                    n = key.n.to_bytes((key.n.bit_length() + 7) // 8, "big")
                    body = {"keys": [{"kty": "RSA", "kid": "bench-key", "alg": "RS256",
                                      "use": "sig", "n": b64(n), "e": b64(b"\x01\x00\x01")}]}
                elif self.path == "/.well-known/parachute-revocation.json":
                    hub.fetches["revocation"] += 1
                    if hub.hang_revocation:
                        hub.release.wait()
                    body = {"generated_at": "2026-01-01T00:00:00Z", "jtis": []}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def token(self, kid="bench-key"):
        claims = {"iss": self.origin, "aud": "runner", "sub": "bench", "scope": "runner:read",
                  "exp": int(time.time()) + 3600, "jti": secrets.token_hex(8)}
        return jwt(self.key, kid, claims)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port, path, token=None, timeout=60):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    started = time.monotonic()
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        c.request("GET", path, headers=headers)
        r = c.getresponse()
        r.read()
        status = r.status
        c.close()
    except OSError as e:
        status = f"error: {type(e).__name__}"
    return (time.monotonic() - started) * 1000, status


class Serve:
    def __init__(self, runner, work, hub):
        vault = os.path.join(work, "vault")
        os.makedirs(os.path.join(vault, "jobs"), exist_ok=True)
        with open(os.path.join(vault, "jobs", "x.md"), "w") as f:
            f.write("---\ntags: [job]\nschedule: manual\nmodel: m\nallowed_tools: Read\n---\nhi\n")
        self.port = free_port()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "RUST_LOG": "warn",
               "PARACHUTE_HOME": os.path.join(work, "home"), "PARACHUTE_HUB_ORIGIN": hub.origin,
               "TZ": "UTC"}
        self.log = open(os.path.join(work, "serve.log"), "w")
        self.proc = subprocess.Popen([runner, "serve", "--port", str(self.port), "--vault-dir", vault],
                                     env=env, stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if get(self.port, "/healthz", timeout=2)[1] == 200:
                return
            time.sleep(0.05)
        raise SystemExit("serve did not start")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)
        self.log.close()


def load(port, seconds, clients):
    """clients: [(name, path, token)]; each runs requests back to back."""
    stop = time.monotonic() + seconds
    out = {}
    lock = threading.Lock()

    def client(name, path, token):
        while time.monotonic() < stop:
            ms, status = get(port, path, token)
            with lock:
                entry = out.setdefault(name, {"ms": [], "status": {}})
                entry["ms"].append(ms)
                entry["status"][str(status)] = entry["status"].get(str(status), 0) + 1

    threads = [threading.Thread(target=client, args=c) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def main(runner, out_dir, seconds):
    seconds = float(seconds)
    os.makedirs(out_dir, exist_ok=True)
    key = Key()

    def phase(name, setup):
        hub = Hub(key)
        work = os.path.join(out_dir, name)
        s = Serve(runner, work, hub)
        try:
            good = hub.token()
            clients = setup(hub, s, good)
            result = load(s.port, seconds, clients)
            result["fetches"] = dict(hub.fetches)
            result["seconds"] = seconds
        finally:
            hub.release.set()
            s.stop()
            hub.server.shutdown()
        with open(os.path.join(out_dir, f"phase-{name}.json"), "w") as f:
            json.dump(result, f)
        summary = {k: v["status"] for k, v in result.items() if isinstance(v, dict) and "status" in v}
        print(f"   {name}: {summary}; hub fetches {hub.fetches}", file=sys.stderr)

    def common(good):
        return [("auth", "/runner/jobs", good)] * 10 + [("healthz", "/healthz", None)] * 2

    def baseline(hub, s, good):
        return common(good)

    def hung(hub, s, good):
        hub.hang_jwks = hub.hang_revocation = True
        return common(good)

    def hung_late(hub, s, good):
        if get(s.port, "/runner/jobs", good)[1] != 200:
            raise SystemExit("hung-late: the first request was not answered 200")
        hub.hang_jwks = hub.hang_revocation = True
        return common(good)

    def bad_kid(hub, s, good):
        if get(s.port, "/runner/jobs", good)[1] != 200:
            raise SystemExit("bad-kid: the first request was not answered 200")
        hub.hang_jwks = True
        bad = hub.token(kid="rotated-away")
        return common(good) + [("bad-kid", "/runner/jobs", bad)] * 10

    phase("baseline", baseline)
    phase("hung", hung)
    phase("hung-late", hung_late)
    phase("bad-kid", bad_kid)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
