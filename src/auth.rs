//! Hub-issued bearer tokens for `serve`'s admin API (SPEC §9.4): RS256
//! JWTs checked against the hub's JWKS, the revocation list, and scopes.
//!
//! `verify` is pure: keys, revocation list and `now` come in as arguments.
//! `Auth` adds the two caches (JWKS 5 min, revocation 60 s) and their
//! fetching. Only RS256 is accepted, decided from the header before any key
//! is touched: no `none`, no HMAC, so a public key can never be misused as
//! a shared secret.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use jiff::Timestamp;
use rsa::{BoxedUint, PublicKey};
use serde_json::Value;
use sha2::Sha256;

/// Scopes (SPEC §9.4).
pub const READ: &str = "runner:read";
pub const ADMIN: &str = "runner:admin";
/// The audience a token must name.
pub const AUDIENCE: &str = "runner";
/// Longest token accepted, in bytes.
pub const MAX_TOKEN: usize = 16 << 10;

const JWKS_TTL: Duration = Duration::from_secs(300);
const JWKS_FORCED_MIN: Duration = Duration::from_secs(10);
const REVOCATION_TTL: Duration = Duration::from_secs(60);

/// What a route needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Read,
    Admin,
}

/// Why a request is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denied {
    /// 401 `{"error":"unauthorized","message"}`.
    Unauthorized(String),
    /// 403 with the scope needed and those granted.
    Forbidden {
        required: &'static str,
        granted: Vec<String>,
    },
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denied::Unauthorized(m) => f.write_str(m),
            Denied::Forbidden { required, .. } => {
                write!(f, "this endpoint requires the '{required}' scope")
            }
        }
    }
}

/// An RSA public key from the JWKS.
#[derive(Clone, Debug)]
pub struct Key {
    pub kid: Option<String>,
    key: PublicKey,
}

/// Parses a JWKS document; keys that are not usable RSA signing keys are
/// skipped.
pub fn parse_jwks(doc: &Value) -> Vec<Key> {
    let Some(keys) = doc.get("keys").and_then(Value::as_array) else {
        return Vec::new();
    };
    keys.iter()
        .filter_map(|k| {
            if k.get("kty").and_then(Value::as_str) != Some("RSA") {
                return None;
            }
            if let Some(alg) = k.get("alg").and_then(Value::as_str)
                && alg != "RS256"
            {
                return None;
            }
            if let Some(use_) = k.get("use").and_then(Value::as_str)
                && use_ != "sig"
            {
                return None;
            }
            let n = B64URL.decode(k.get("n")?.as_str()?).ok()?;
            let e = B64URL.decode(k.get("e")?.as_str()?).ok()?;
            let key = PublicKey::new(
                BoxedUint::from_be_slice_vartime(&n),
                BoxedUint::from_be_slice_vartime(&e),
            )
            .ok()?;
            Some(Key {
                kid: k.get("kid").and_then(Value::as_str).map(String::from),
                key,
            })
        })
        .collect()
}

/// A token's checked claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    pub jti: String,
    pub scopes: Vec<String>,
    pub sub: Option<String>,
    /// `exp`, in whole seconds (rounded down).
    pub exp: i64,
}

/// Why a signature check failed, so the caller knows whether fresh keys
/// could help.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    /// Unknown `kid` or bad signature: reloading the JWKS may help.
    Key(String),
    /// Anything else.
    Token(String),
}

impl Failure {
    fn message(&self) -> &str {
        match self {
            Failure::Key(m) | Failure::Token(m) => m,
        }
    }
}

/// Checks a token's form, signature and claims (not revocation, not
/// scopes).
pub fn verify(token: &str, keys: &[Key], issuer: &str, now: Timestamp) -> Result<Claims, Failure> {
    let bad = |m: &str| Failure::Token(m.to_string());
    if token.len() > MAX_TOKEN {
        return Err(bad("token too large"));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("malformed token"));
    };
    let header: Value = B64URL
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| bad("malformed token header"))?;
    // The algorithm is fixed before any key is looked at.
    if header.get("alg").and_then(Value::as_str) != Some("RS256") {
        return Err(bad("unsupported token algorithm (only RS256 is accepted)"));
    }
    let kid = match header.get("kid") {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) => Some(k.as_str()),
        Some(_) => return Err(bad("malformed token header")),
    };
    let signature = B64URL
        .decode(s)
        .map_err(|_| bad("malformed token signature"))?;
    let signed = &token.as_bytes()[..h.len() + 1 + p.len()];
    let candidates: Vec<&Key> = match kid {
        Some(kid) => keys
            .iter()
            .filter(|k| k.kid.as_deref() == Some(kid))
            .collect(),
        None => keys.iter().collect(),
    };
    if candidates.is_empty() {
        return Err(Failure::Key("unknown signing key".to_string()));
    }
    if !candidates
        .iter()
        .any(|k| k.key.pkcs1v15_verify::<Sha256>(signed, &signature).is_ok())
    {
        return Err(Failure::Key("invalid token signature".to_string()));
    }
    let claims: Value = B64URL
        .decode(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(Value::is_object)
        .ok_or_else(|| bad("malformed token payload"))?;
    if claims.get("iss").and_then(Value::as_str) != Some(issuer) {
        return Err(bad("token issuer mismatch"));
    }
    let audience_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == AUDIENCE,
        Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(AUDIENCE)),
        _ => false,
    };
    if !audience_ok {
        return Err(bad("token audience mismatch"));
    }
    let exp = match claims.get("exp").and_then(Value::as_f64) {
        Some(exp) if exp > now.as_second() as f64 => exp.floor() as i64,
        Some(_) => return Err(bad("token expired")),
        None => return Err(bad("token has no expiry")),
    };
    let jti = match claims.get("jti").and_then(Value::as_str) {
        Some(j) if !j.is_empty() => j.to_string(),
        _ => return Err(bad("token has no jti")),
    };
    let scopes = claims
        .get("scope")
        .and_then(Value::as_str)
        .map(|s| s.split_whitespace().map(String::from).collect())
        .unwrap_or_default();
    Ok(Claims {
        jti,
        scopes,
        sub: claims.get("sub").and_then(Value::as_str).map(String::from),
        exp,
    })
}

/// Whether granted scopes satisfy a route.
pub fn check_scope(claims: &Claims, need: Need) -> Result<(), Denied> {
    let has = |s: &str| claims.scopes.iter().any(|g| g == s);
    let ok = match need {
        Need::Read => has(READ) || has(ADMIN),
        Need::Admin => has(ADMIN),
    };
    if ok {
        Ok(())
    } else {
        Err(Denied::Forbidden {
            required: if need == Need::Read { READ } else { ADMIN },
            granted: claims.scopes.clone(),
        })
    }
}

struct KeyCache {
    keys: Vec<Key>,
    fetched: Option<Instant>,
    forced: Option<Instant>,
    /// The last fetch attempt, good or bad: a hub that fails is asked
    /// again only after `RETRY_MIN`, not on every request.
    attempted: Option<Instant>,
}

struct RevocationCache {
    jtis: Option<HashSet<String>>,
    fetched: Option<Instant>,
    attempted: Option<Instant>,
}

/// How long after a failed fetch from the hub the next one is tried.
const RETRY_MIN: Duration = Duration::from_secs(10);

/// Whether to fetch again: never fetched (every request tries, as none can
/// pass without it), or older than `ttl` with the last attempt old enough
/// (a failing hub is not asked on every request while the last good copy
/// serves).
fn refetch_due(fetched: Option<Instant>, attempted: Option<Instant>, ttl: Duration) -> bool {
    match fetched {
        None => true,
        Some(t) => t.elapsed() >= ttl && attempted.is_none_or(|a| a.elapsed() >= RETRY_MIN),
    }
}

/// Tokens whose signature and claims checked out, by SHA-256, so a busy
/// client does not cost an RSA verification per request. Emptied when the
/// keys change; expiry, revocation and scope are checked on every use.
const VERIFIED_CAP: usize = 1024;

/// Token checking with the hub's keys and revocation list, cached.
pub struct Auth {
    origin: String,
    agent: ureq::Agent,
    keys: Mutex<KeyCache>,
    revoked: Mutex<RevocationCache>,
    verified: Mutex<HashMap<[u8; 32], Claims>>,
}

impl Auth {
    pub fn new(origin: String) -> Auth {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(3)))
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .into();
        Auth {
            origin,
            agent,
            keys: Mutex::new(KeyCache {
                keys: Vec::new(),
                fetched: None,
                forced: None,
                attempted: None,
            }),
            revoked: Mutex::new(RevocationCache {
                jtis: None,
                fetched: None,
                attempted: None,
            }),
            verified: Mutex::new(HashMap::new()),
        }
    }

    /// Checks the `Authorization` header value for a route.
    pub fn check(
        &self,
        header: Option<&str>,
        need: Need,
        now: Timestamp,
    ) -> Result<Claims, Denied> {
        let unauthorized = |m: &str| Denied::Unauthorized(m.to_string());
        let token = match header.map(str::trim) {
            None | Some("") => return Err(unauthorized("missing bearer token")),
            Some(h) => match h.split_once(' ') {
                Some((scheme, token))
                    if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
                {
                    token.trim()
                }
                _ => return Err(unauthorized("expected an Authorization: Bearer token")),
            },
        };
        let claims = self
            .verified(token, now)
            .map_err(|f| unauthorized(f.message()))?;
        match self.is_revoked(&claims.jti) {
            None => return Err(unauthorized("revocation list unavailable")),
            Some(true) => return Err(unauthorized("token has been revoked")),
            Some(false) => {}
        }
        check_scope(&claims, need)?;
        Ok(claims)
    }

    /// The claims of a token, from the cache of verified tokens or checked
    /// now.
    fn verified(&self, token: &str, now: Timestamp) -> Result<Claims, Failure> {
        use sha2::Digest;
        // Stale keys are fetched again first; new keys empty the cache of
        // verified tokens, so a key the hub dropped stops verifying. (Keys
        // never loaded: nothing is cached, and the check below fetches.)
        if self.keys.lock().is_ok_and(|c| c.fetched.is_some()) {
            self.with_keys(false, |_| ());
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(claims) = self
            .verified
            .lock()
            .ok()
            .and_then(|c| c.get(&digest).cloned())
        {
            if claims.exp > now.as_second() {
                return Ok(claims);
            }
            return Err(Failure::Token("token expired".to_string()));
        }
        let claims = self.verify_with_reload(token, now)?;
        if let Ok(mut cache) = self.verified.lock() {
            if cache.len() >= VERIFIED_CAP {
                cache.clear();
            }
            cache.insert(digest, claims.clone());
        }
        Ok(claims)
    }

    fn verify_with_reload(&self, token: &str, now: Timestamp) -> Result<Claims, Failure> {
        match self.with_keys(false, |keys| verify(token, keys, &self.origin, now)) {
            Err(Failure::Key(_)) => {
                // An unknown kid or a bad signature: the hub may have rotated
                // its keys. One forced reload, at most every 10 s.
                self.with_keys(true, |keys| verify(token, keys, &self.origin, now))
            }
            other => other,
        }
    }

    /// Calls `f` on the cached keys, fetched first when stale (or, with
    /// `force`, when the last forced fetch is old enough).
    fn with_keys<T>(&self, force: bool, f: impl FnOnce(&[Key]) -> T) -> T {
        let Ok(mut cache) = self.keys.lock() else {
            return f(&[]);
        };
        let stale = refetch_due(cache.fetched, cache.attempted, JWKS_TTL);
        let may_force = force && cache.forced.is_none_or(|t| t.elapsed() >= JWKS_FORCED_MIN);
        if stale || may_force {
            if force {
                cache.forced = Some(Instant::now());
            }
            cache.attempted = Some(Instant::now());
            match self.fetch_json("/.well-known/jwks.json") {
                Ok(doc) => {
                    cache.keys = parse_jwks(&doc);
                    cache.fetched = Some(Instant::now());
                    // Tokens verified with the old keys are checked again.
                    if let Ok(mut verified) = self.verified.lock() {
                        verified.clear();
                    }
                }
                Err(e) => log::warn!("auth: cannot load the hub's keys: {e}"),
            }
        }
        f(&cache.keys)
    }

    /// Whether `jti` is revoked, or `None` if the list never loaded.
    fn is_revoked(&self, jti: &str) -> Option<bool> {
        let mut cache = self.revoked.lock().ok()?;
        if refetch_due(cache.fetched, cache.attempted, REVOCATION_TTL) {
            cache.attempted = Some(Instant::now());
            match self.fetch_json("/.well-known/parachute-revocation.json") {
                Ok(doc) => match doc.get("jtis").and_then(Value::as_array) {
                    Some(list) => {
                        cache.jtis = Some(
                            list.iter()
                                .filter_map(Value::as_str)
                                .map(String::from)
                                .collect(),
                        );
                        cache.fetched = Some(Instant::now());
                    }
                    None => log::warn!(
                        "auth: the revocation list has no \"jtis\" array; keeping the last good one"
                    ),
                },
                Err(e) => log::warn!(
                    "auth: cannot refresh the revocation list: {e}; keeping the last good one"
                ),
            }
        }
        cache.jtis.as_ref().map(|jtis| jtis.contains(jti))
    }

    fn fetch_json(&self, path: &str) -> Result<Value, String> {
        let mut response = self
            .agent
            .get(format!("{}{path}", self.origin))
            .call()
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(format!("{path}: hub answered {status}"));
        }
        let body = response
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_vec()
            .map_err(|e| e.to_string())?;
        serde_json::from_slice(&body).map_err(|e| format!("{path}: not JSON: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_algorithm_is_checked_first() {
        let seg = |v: &Value| B64URL.encode(serde_json::to_vec(v).unwrap());
        let payload =
            seg(&serde_json::json!({"iss": "h", "aud": "runner", "exp": 9e9, "jti": "j"}));
        for alg in ["none", "HS256", "RS512", "rs256"] {
            let token = format!("{}.{payload}.", seg(&serde_json::json!({"alg": alg})));
            assert_eq!(
                verify(&token, &[], "h", Timestamp::UNIX_EPOCH),
                Err(Failure::Token(
                    "unsupported token algorithm (only RS256 is accepted)".into()
                ))
            );
        }
    }

    #[test]
    fn malformed_tokens() {
        for token in [
            "",
            "a",
            "a.b",
            "a.b.c.d",
            "!!.x.y",
            "e30.e30.e30",
            &"a".repeat(MAX_TOKEN + 1),
        ] {
            assert!(
                matches!(
                    verify(token, &[], "h", Timestamp::UNIX_EPOCH),
                    Err(Failure::Token(_))
                ),
                "{token:.20}"
            );
        }
        // Deep nesting is refused by the JSON parser, not a stack overflow.
        let deep = B64URL.encode("[".repeat(100_000));
        assert!(verify(&format!("{deep}.e30.e30"), &[], "h", Timestamp::UNIX_EPOCH).is_err());
    }

    #[test]
    fn scopes() {
        let c = |s: &[&str]| Claims {
            jti: "j".into(),
            scopes: s.iter().map(|x| x.to_string()).collect(),
            sub: None,
            exp: 0,
        };
        assert!(check_scope(&c(&[READ]), Need::Read).is_ok());
        assert!(check_scope(&c(&[ADMIN]), Need::Read).is_ok());
        assert!(check_scope(&c(&[ADMIN]), Need::Admin).is_ok());
        assert_eq!(
            check_scope(&c(&[READ, "vault:read"]), Need::Admin),
            Err(Denied::Forbidden {
                required: ADMIN,
                granted: vec![READ.into(), "vault:read".into()]
            })
        );
        assert!(check_scope(&c(&[]), Need::Read).is_err());
    }
}
