//! A fake Parachute hub (SPEC §9.4): serves the JWKS and the revocation
//! list over HTTP, and mints RS256 tokens with a test RSA key. It can be
//! told to fail the revocation list, or to hang either document (accept
//! the request and answer nothing until released), and counts the fetches
//! as they arrive. Each request has its own thread, so a hanging one does
//! not hold up the others.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use rsa::PrivateKey;
use rsa::pkcs1v15::SigningKey;
use rsa::signature::{SignatureEncoding, Signer};
use rsa::traits::PublicKeyParts;
use serde_json::{Value, json};
use sha2::Sha256;

/// The key the hub publishes: one 2048-bit key per test process
/// (generating takes a second).
pub fn published_key() -> &'static PrivateKey {
    static KEY: OnceLock<PrivateKey> = OnceLock::new();
    KEY.get_or_init(|| PrivateKey::new(&mut getrandom::SysRng, 2048).unwrap())
}

/// A second key the hub does not publish (a forger's).
pub fn other_key() -> &'static PrivateKey {
    static KEY: OnceLock<PrivateKey> = OnceLock::new();
    KEY.get_or_init(|| PrivateKey::new(&mut getrandom::SysRng, 2048).unwrap())
}

pub const KID: &str = "test-key-1";

/// The two documents, for `hang`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Doc {
    Jwks,
    Revocation,
}

#[derive(Default)]
struct Hangs {
    jwks: bool,
    revocation: bool,
    /// Requests held right now.
    jwks_held: usize,
    revocation_held: usize,
}

struct State {
    revoked: Mutex<Vec<String>>,
    revocation_fails: AtomicBool,
    jwks_fetches: AtomicUsize,
    revocation_fetches: AtomicUsize,
    hangs: Mutex<Hangs>,
    released: Condvar,
    stopped: AtomicBool,
}

impl State {
    /// Holds the request while `doc` hangs.
    fn hold(&self, doc: Doc) {
        let mut h = self.hangs.lock().unwrap();
        let hanging = |h: &Hangs| match doc {
            Doc::Jwks => h.jwks,
            Doc::Revocation => h.revocation,
        };
        if !hanging(&h) {
            return;
        }
        match doc {
            Doc::Jwks => h.jwks_held += 1,
            Doc::Revocation => h.revocation_held += 1,
        }
        while hanging(&h) && !self.stopped.load(Ordering::SeqCst) {
            h = self.released.wait(h).unwrap();
        }
        match doc {
            Doc::Jwks => h.jwks_held -= 1,
            Doc::Revocation => h.revocation_held -= 1,
        }
    }
}

pub struct FakeHub {
    server: Arc<tiny_http::Server>,
    url: String,
    state: Arc<State>,
}

impl FakeHub {
    pub fn start() -> FakeHub {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let url = format!("http://{}", server.server_addr().to_ip().unwrap());
        let state = Arc::new(State {
            revoked: Mutex::new(Vec::new()),
            revocation_fails: AtomicBool::new(false),
            jwks_fetches: AtomicUsize::new(0),
            revocation_fetches: AtomicUsize::new(0),
            hangs: Mutex::new(Hangs::default()),
            released: Condvar::new(),
            stopped: AtomicBool::new(false),
        });
        let (srv, st) = (Arc::clone(&server), Arc::clone(&state));
        std::thread::spawn(move || {
            for request in srv.incoming_requests() {
                let st = Arc::clone(&st);
                std::thread::spawn(move || respond(request, &st));
            }
        });
        FakeHub { server, url, state }
    }

    /// While `on`, requests for `doc` are accepted and get no answer (they
    /// are counted as they arrive); turning it off answers them.
    pub fn hang(&self, doc: Doc, on: bool) {
        let mut h = self.state.hangs.lock().unwrap();
        match doc {
            Doc::Jwks => h.jwks = on,
            Doc::Revocation => h.revocation = on,
        }
        self.state.released.notify_all();
    }

    /// Requests for `doc` held by `hang` right now.
    pub fn held(&self, doc: Doc) -> usize {
        let h = self.state.hangs.lock().unwrap();
        match doc {
            Doc::Jwks => h.jwks_held,
            Doc::Revocation => h.revocation_held,
        }
    }

    /// Waits until `n` requests for `doc` are held (false after `limit`).
    pub fn wait_held(&self, doc: Doc, n: usize, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.held(doc) >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.held(doc) >= n
    }

    /// The origin, as PARACHUTE_HUB_ORIGIN and the tokens' `iss`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn revoke(&self, jti: &str) {
        self.state.revoked.lock().unwrap().push(jti.to_string());
    }

    pub fn fail_revocation(&self, fail: bool) {
        self.state.revocation_fails.store(fail, Ordering::SeqCst);
    }

    pub fn jwks_fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    pub fn revocation_fetches(&self) -> usize {
        self.state.revocation_fetches.load(Ordering::SeqCst)
    }

    /// Valid claims for this hub with `scope`; adjust before signing.
    pub fn claims(&self, scope: &str) -> Value {
        static N: AtomicUsize = AtomicUsize::new(0);
        json!({
            "iss": self.url,
            "aud": "runner",
            "sub": "user-1",
            "exp": jiff::Timestamp::now().as_second() + 3600,
            "jti": format!("jti-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)),
            "scope": scope,
        })
    }

    /// A good token with `scope`.
    pub fn token(&self, scope: &str) -> String {
        sign(
            &json!({"alg": "RS256", "typ": "JWT", "kid": KID}),
            &self.claims(scope),
            published_key(),
        )
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.state.stopped.store(true, Ordering::SeqCst);
        {
            let _h = self.state.hangs.lock().unwrap();
            self.state.released.notify_all();
        }
        self.server.unblock();
    }
}

fn respond(request: tiny_http::Request, st: &State) {
    let (status, body) = match request.url() {
        "/.well-known/jwks.json" => {
            st.jwks_fetches.fetch_add(1, Ordering::SeqCst);
            st.hold(Doc::Jwks);
            (200, jwks().to_string())
        }
        "/.well-known/parachute-revocation.json" => {
            st.revocation_fetches.fetch_add(1, Ordering::SeqCst);
            st.hold(Doc::Revocation);
            if st.revocation_fails.load(Ordering::SeqCst) {
                (500, "{\"error\":\"down\"}".to_string())
            } else {
                let jtis = st.revoked.lock().unwrap().clone();
                (
                    200,
                    json!({"generated_at": "2026-01-01T00:00:00Z", "jtis": jtis}).to_string(),
                )
            }
        }
        _ => (404, "{}".to_string()),
    };
    let _ = request.respond(tiny_http::Response::from_string(body).with_status_code(status));
}

fn jwks() -> Value {
    let public = published_key().to_public_key();
    json!({"keys": [{
        "kty": "RSA", "kid": KID, "alg": "RS256", "use": "sig",
        "n": B64URL.encode(public.n_bytes()),
        "e": B64URL.encode(public.e_bytes()),
    }]})
}

pub fn segment(v: &Value) -> String {
    B64URL.encode(serde_json::to_vec(v).unwrap())
}

/// `header.payload.signature`, RS256 with `key`.
pub fn sign(header: &Value, payload: &Value, key: &PrivateKey) -> String {
    let signing_input = format!("{}.{}", segment(header), segment(payload));
    let signature = SigningKey::<Sha256>::new(key.clone()).sign(signing_input.as_bytes());
    format!("{signing_input}.{}", B64URL.encode(signature.to_bytes()))
}

/// HS256 over `header.payload` with the hub's public key bytes as the
/// secret: the classic algorithm-confusion forgery.
pub fn hs256_with_public_key(payload: &Value) -> String {
    let header = json!({"alg": "HS256", "typ": "JWT", "kid": KID});
    let signing_input = format!("{}.{}", segment(&header), segment(payload));
    let mac = hmac_sha256(jwks().to_string().as_bytes(), signing_input.as_bytes());
    format!("{signing_input}.{}", B64URL.encode(mac))
}

/// HMAC-SHA256 (RFC 2104), enough for a forged test token.
fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}
