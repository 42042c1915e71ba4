//! Hub-issued bearer tokens for `serve`'s admin API (SPEC §9.4): RS256
//! JWTs checked against the hub's JWKS, the revocation list, and scopes.
//!
//! `verify` is pure: keys, revocation list and `now` come in as arguments.
//! `Auth` adds the two caches (JWKS 5 min, revocation 60 s) and their
//! fetching, and the local admin token (`runner/admin-token`). Only RS256
//! is accepted, decided from the header before any key is touched: no
//! `none`, no HMAC, so a public key can never be misused as a shared
//! secret.
//!
//! A slow or dead hub never stalls the API (SPEC §9.4): no lock is held
//! while the hub is asked; each document has at most one fetch in flight,
//! with a deadline of a few seconds, and requests that need it share it. A
//! stale copy keeps serving while a refresh runs in the background. With
//! no copy at all, requests wait for the one fetch in flight and then get
//! 503 `hub_unreachable` together; after a fetch that timed out the hub is
//! not asked again for `RETRY_MIN`, and requests get 503 at once. An
//! unknown `kid` forces one reload at most every 10 s, which only the
//! tokens needing it wait for.
//!
//! Long (about 900 lines) because it is one trust decision: the token's
//! checks, the two caches with their single-flight fetches and deadlines,
//! and the local admin token belong together, and splitting them would
//! spread what decides a 401, 403 or 503 over several files.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::Read as _;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
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
/// Deadline of one fetch from the hub (connect, then the whole exchange).
const FETCH_CONNECT: Duration = Duration::from_secs(2);
const FETCH_DEADLINE: Duration = Duration::from_secs(4);
/// How long after a failed fetch the hub is asked again: for a stale copy
/// always, with no copy only after a slow failure (a hub that answers an
/// error or refuses at once is cheap to ask on the next request).
const RETRY_MIN: Duration = Duration::from_secs(10);
/// A failed fetch that took this long counts as slow.
const SLOW_FAILURE: Duration = Duration::from_secs(1);
/// How far in the future `nbf` and `iat` may be (clock skew).
pub const FUTURE_LEEWAY: i64 = 60;
/// The local admin token's file, in `runner/` (SPEC §2).
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

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
    /// 503 `{"error":"hub_unreachable","message"}`: the hub's keys or
    /// revocation list are needed and cannot be had.
    Unavailable(String),
    /// 403 with the scope needed and those granted.
    Forbidden {
        required: &'static str,
        granted: Vec<String>,
    },
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denied::Unauthorized(m) | Denied::Unavailable(m) => f.write_str(m),
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
    // Not valid yet, beyond the clock skew allowed.
    for (claim, message) in [
        ("nbf", "token not valid yet (nbf is in the future)"),
        ("iat", "token issued in the future (iat)"),
    ] {
        match claims.get(claim) {
            None | Some(Value::Null) => {}
            Some(v) => match v.as_f64() {
                Some(t) if t > (now.as_second() + FUTURE_LEEWAY) as f64 => {
                    return Err(bad(message));
                }
                Some(_) => {}
                None => return Err(bad("malformed token payload")),
            },
        }
    }
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

/// Why the hub's keys or revocation list could not be had.
#[derive(Clone, Debug)]
enum FetchError {
    /// No answer: refused, timed out, reset.
    Unreachable(String),
    /// An answer that is not a usable document.
    Bad(String),
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::Unreachable(m) | FetchError::Bad(m) => f.write_str(m),
        }
    }
}

/// A document of the hub that `Auth` caches.
trait Document: Sized + Send + Sync + 'static {
    const PATH: &'static str;
    const WHAT: &'static str;
    const TTL: Duration;
    fn parse(doc: &Value) -> Result<Self, String>;
    fn source(inner: &Inner) -> &Source<Self>;
    /// After a good fetch.
    fn loaded(_inner: &Inner) {}
}

/// The hub's signing keys.
struct Keys(Vec<Key>);

impl Document for Keys {
    const PATH: &'static str = "/.well-known/jwks.json";
    const WHAT: &'static str = "the hub's signing keys";
    const TTL: Duration = JWKS_TTL;

    fn parse(doc: &Value) -> Result<Keys, String> {
        if doc.get("keys").and_then(Value::as_array).is_none() {
            return Err("no \"keys\" array".to_string());
        }
        Ok(Keys(parse_jwks(doc)))
    }

    fn source(inner: &Inner) -> &Source<Keys> {
        &inner.keys
    }

    fn loaded(inner: &Inner) {
        // Tokens verified with the old keys are checked again, so a key
        // the hub dropped stops verifying.
        inner
            .verified
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

/// The revoked `jti`s.
struct Revoked(HashSet<String>);

impl Document for Revoked {
    const PATH: &'static str = "/.well-known/parachute-revocation.json";
    const WHAT: &'static str = "the revocation list";
    const TTL: Duration = REVOCATION_TTL;

    fn parse(doc: &Value) -> Result<Revoked, String> {
        let list = doc
            .get("jtis")
            .and_then(Value::as_array)
            .ok_or("no \"jtis\" array")?;
        Ok(Revoked(
            list.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect(),
        ))
    }

    fn source(inner: &Inner) -> &Source<Revoked> {
        &inner.revoked
    }
}

/// A cached document and the one fetch of it that may be going on.
struct Slot<T> {
    value: Option<Arc<T>>,
    fetched: Option<Instant>,
    in_flight: bool,
    /// Fetches finished, so a waiter sees the one it waits for end.
    completed: u64,
    /// The last failure, since the last good fetch: when it ended, how
    /// long it took, why.
    failure: Option<(Instant, Duration, FetchError)>,
    /// The last forced reload.
    forced: Option<Instant>,
    /// The last failure logged at warn level.
    warned: Option<Instant>,
}

impl<T> Slot<T> {
    /// A copy that is stale, with the hub worth asking again.
    fn refresh_due(&self, ttl: Duration) -> bool {
        !self.in_flight
            && self.fetched.is_none_or(|t| t.elapsed() >= ttl)
            && self
                .failure
                .as_ref()
                .is_none_or(|(ended, _, _)| ended.elapsed() >= RETRY_MIN)
    }

    /// With no copy: the last failure, while it says the hub is not worth
    /// asking yet (it hung, recently).
    fn known_down(&self) -> Option<FetchError> {
        match &self.failure {
            Some((ended, took, e)) if *took >= SLOW_FAILURE && ended.elapsed() < RETRY_MIN => {
                Some(e.clone())
            }
            _ => None,
        }
    }

    /// Marks the fetch going on as ended.
    fn finish(&mut self, result: Result<Arc<T>, (Duration, FetchError)>, what: &str) {
        self.in_flight = false;
        self.completed += 1;
        match result {
            Ok(value) => {
                self.value = Some(value);
                self.fetched = Some(Instant::now());
                if self.failure.take().is_some() {
                    log::info!("auth: {what} loaded again");
                }
            }
            Err((took, e)) => {
                if self
                    .warned
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
                {
                    self.warned = Some(Instant::now());
                    if self.value.is_some() {
                        log::warn!("auth: cannot refresh {what} ({e}); keeping the last good copy");
                    } else {
                        log::warn!("auth: cannot load {what}: {e}");
                    }
                }
                self.failure = Some((Instant::now(), took, e));
            }
        }
    }
}

struct Source<T> {
    slot: Mutex<Slot<T>>,
    /// Signalled when a fetch ends.
    done: Condvar,
}

impl<T> Source<T> {
    fn new() -> Source<T> {
        Source {
            slot: Mutex::new(Slot {
                value: None,
                fetched: None,
                in_flight: false,
                completed: 0,
                failure: None,
                forced: None,
                warned: None,
            }),
            done: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Slot<T>> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Ends a fetch that did not end normally (its thread panicked), so no
/// waiter waits for it and the next request may fetch again.
struct InFlight<'a, T: Document> {
    source: &'a Source<T>,
    armed: bool,
}

impl<T: Document> Drop for InFlight<'_, T> {
    fn drop(&mut self) {
        if self.armed {
            let mut slot = self.source.lock();
            slot.finish(
                Err((
                    Duration::ZERO,
                    FetchError::Unreachable("the fetch failed".to_string()),
                )),
                T::WHAT,
            );
            self.source.done.notify_all();
        }
    }
}

/// What a caller wants of a document.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    /// The cached copy, if any.
    Current,
    /// A fresh copy (an unknown `kid`): at most one forced reload every
    /// `JWKS_FORCED_MIN`; meanwhile the cached copy.
    Reload,
}

/// Tokens whose signature and claims checked out, by SHA-256, so a busy
/// client does not cost an RSA verification per request. Emptied when the
/// keys change; expiry, revocation and scope are checked on every use.
const VERIFIED_CAP: usize = 1024;

/// Token checking with the hub's keys and revocation list, cached, and the
/// local admin token.
pub struct Auth {
    inner: Arc<Inner>,
}

struct Inner {
    origin: String,
    agent: ureq::Agent,
    keys: Source<Keys>,
    revoked: Source<Revoked>,
    verified: Mutex<HashMap<[u8; 32], Claims>>,
    /// SHA-256 of the local admin token, once `serve` has it.
    local: OnceLock<[u8; 32]>,
}

impl Auth {
    pub fn new(origin: String) -> Auth {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(FETCH_CONNECT))
            .timeout_global(Some(FETCH_DEADLINE))
            .build();
        Auth {
            inner: Arc::new(Inner {
                origin,
                agent: crate::http::client(config),
                keys: Source::new(),
                revoked: Source::new(),
                verified: Mutex::new(HashMap::new()),
                local: OnceLock::new(),
            }),
        }
    }

    /// Accepts `token` (the content of `runner/admin-token`) with admin
    /// scope, without the hub.
    pub fn allow_local_admin(&self, token: &str) {
        let _ = self.inner.local.set(digest(token));
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
        if self.is_local_admin(token) {
            let claims = Claims {
                jti: "local-admin-token".to_string(),
                scopes: vec![ADMIN.to_string()],
                sub: Some("local-admin".to_string()),
                exp: i64::MAX,
            };
            check_scope(&claims, need)?;
            return Ok(claims);
        }
        let claims = self.verified(token, now)?;
        match self.inner.get::<Revoked>(Want::Current) {
            Ok(list) if list.0.contains(&claims.jti) => {
                return Err(unauthorized("token has been revoked"));
            }
            Ok(_) => {}
            Err(FetchError::Unreachable(e)) => {
                return Err(Denied::Unavailable(format!(
                    "the hub's revocation list cannot be loaded: {e}"
                )));
            }
            Err(FetchError::Bad(_)) => return Err(unauthorized("revocation list unavailable")),
        }
        check_scope(&claims, need)?;
        Ok(claims)
    }

    /// Compares digests, so the time taken says nothing about the token.
    fn is_local_admin(&self, token: &str) -> bool {
        let Some(want) = self.inner.local.get() else {
            return false;
        };
        let got = digest(token);
        let differ = want
            .iter()
            .zip(got.iter())
            .fold(0u8, |acc, (a, b)| std::hint::black_box(acc | (a ^ b)));
        differ == 0
    }

    /// The claims of a token, from the cache of verified tokens or checked
    /// now.
    fn verified(&self, token: &str, now: Timestamp) -> Result<Claims, Denied> {
        let unauthorized = |m: &str| Denied::Unauthorized(m.to_string());
        let unavailable =
            |e: FetchError| Denied::Unavailable(format!("{} cannot be loaded: {e}", Keys::WHAT));
        // What can be refused without keys is refused before they are
        // needed (a malformed token, another algorithm).
        if let Err(Failure::Token(m)) = verify(token, &[], &self.inner.origin, now) {
            return Err(unauthorized(&m));
        }
        // A stale copy is refreshed in the background meanwhile.
        let keys = self.inner.get::<Keys>(Want::Current).map_err(unavailable)?;
        let digest = digest(token);
        if let Some(claims) = self
            .inner
            .verified
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&digest)
            .cloned()
        {
            if claims.exp > now.as_second() {
                return Ok(claims);
            }
            return Err(unauthorized("token expired"));
        }
        let origin = &self.inner.origin;
        let claims = match verify(token, &keys.0, origin, now) {
            Ok(claims) => claims,
            Err(Failure::Key(message)) => {
                // An unknown kid or a bad signature: the hub may have
                // rotated its keys. Only this token waits for the reload.
                match self.inner.get::<Keys>(Want::Reload) {
                    Ok(fresh) if !Arc::ptr_eq(&fresh, &keys) => {
                        verify(token, &fresh.0, origin, now)
                            .map_err(|f| unauthorized(f.message()))?
                    }
                    _ => return Err(unauthorized(&message)),
                }
            }
            Err(f) => return Err(unauthorized(f.message())),
        };
        let mut cache = self
            .inner
            .verified
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= VERIFIED_CAP {
            cache.clear();
        }
        cache.insert(digest, claims.clone());
        Ok(claims)
    }
}

fn digest(token: &str) -> [u8; 32] {
    use sha2::Digest;
    Sha256::digest(token.as_bytes()).into()
}

impl Inner {
    /// A document: the cached copy (a stale one is refreshed in the
    /// background), or, with none (or for a forced reload), the result of
    /// one fetch shared by every request that needs it meanwhile. No lock
    /// is held while the hub is asked.
    fn get<T: Document>(self: &Arc<Self>, want: Want) -> Result<Arc<T>, FetchError> {
        let source = T::source(self);
        let mut slot = source.lock();
        match (want, slot.value.clone()) {
            (Want::Current, Some(value)) => {
                if slot.refresh_due(T::TTL) {
                    slot.in_flight = true;
                    drop(slot);
                    self.refresh_in_background::<T>();
                }
                return Ok(value);
            }
            (Want::Reload, Some(value))
                if !slot.in_flight
                    && slot.forced.is_some_and(|t| t.elapsed() < JWKS_FORCED_MIN) =>
            {
                return Ok(value);
            }
            (Want::Current, None) if !slot.in_flight => {
                if let Some(e) = slot.known_down() {
                    return Err(e);
                }
            }
            _ => {}
        }
        if slot.in_flight {
            // Share the fetch going on (it ends by its deadline).
            let seen = slot.completed;
            let deadline = Instant::now() + FETCH_DEADLINE + Duration::from_secs(1);
            while slot.in_flight && slot.completed == seen {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                slot = source
                    .done
                    .wait_timeout(slot, left)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
            return match (&slot.value, &slot.failure) {
                (Some(value), _) => Ok(Arc::clone(value)),
                (None, Some((_, _, e))) => Err(e.clone()),
                (None, None) => Err(FetchError::Unreachable(format!(
                    "{}: the hub did not answer in time",
                    T::PATH
                ))),
            };
        }
        if want == Want::Reload {
            slot.forced = Some(Instant::now());
        }
        slot.in_flight = true;
        drop(slot);
        self.fetch_and_store::<T>()
    }

    /// Refreshes a stale copy on a thread of its own; without a thread the
    /// copy serves on and the next request after `RETRY_MIN` tries again.
    fn refresh_in_background<T: Document>(self: &Arc<Self>) {
        let inner = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("hub-fetch".into())
            .spawn(move || {
                let _ = inner.fetch_and_store::<T>();
            });
        if let Err(e) = spawned {
            let source = T::source(self);
            source.lock().finish(
                Err((
                    Duration::ZERO,
                    FetchError::Unreachable(format!("cannot start a thread: {e}")),
                )),
                T::WHAT,
            );
            source.done.notify_all();
        }
    }

    /// The fetch this caller set `in_flight` for: asks the hub, stores the
    /// outcome, wakes the waiters.
    fn fetch_and_store<T: Document>(&self) -> Result<Arc<T>, FetchError> {
        let source = T::source(self);
        let mut guard = InFlight {
            source,
            armed: true,
        };
        let started = Instant::now();
        let result = self.fetch::<T>().map(Arc::new);
        let took = started.elapsed();
        guard.armed = false;
        {
            let mut slot = source.lock();
            slot.finish(
                result
                    .as_ref()
                    .map(Arc::clone)
                    .map_err(|e| (took, e.clone())),
                T::WHAT,
            );
            source.done.notify_all();
        }
        if result.is_ok() {
            T::loaded(self);
        }
        result
    }

    fn fetch<T: Document>(&self) -> Result<T, FetchError> {
        let path = T::PATH;
        let mut response = self
            .agent
            .get(format!("{}{path}", self.origin))
            .call()
            .map_err(|e| FetchError::Unreachable(format!("{path}: {e}")))?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(FetchError::Bad(format!("{path}: hub answered {status}")));
        }
        let body = response
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_vec()
            .map_err(|e| match e {
                ureq::Error::BodyExceedsLimit(_) => FetchError::Bad(format!("{path}: over 1 MiB")),
                e => FetchError::Unreachable(format!("{path}: {e}")),
            })?;
        let doc: Value = serde_json::from_slice(&body)
            .map_err(|e| FetchError::Bad(format!("{path}: not JSON: {e}")))?;
        T::parse(&doc).map_err(|e| FetchError::Bad(format!("{path}: {e}")))
    }
}

/// Loads `runner/admin-token` (SPEC §2, §9.4), creating it on first start:
/// 32 random bytes from the OS as hex, written 0600 atomically, never over
/// an existing one. Returns the token and whether it was created. An
/// unreadable or malformed file is an error: it is never replaced.
pub fn admin_token(runner_dir: &Path) -> Result<(String, bool), String> {
    let path = runner_dir.join(ADMIN_TOKEN_FILE);
    // A second round only if another process created it meanwhile.
    for _ in 0..2 {
        if let Some(token) = read_admin_token(&path)? {
            return Ok((token, false));
        }
        let mut bytes = [0u8; 32];
        crate::random::fill(&mut bytes)
            .map_err(|e| format!("cannot make {}: {e}", path.display()))?;
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        crate::files::create_private_dir(runner_dir)
            .map_err(|e| format!("cannot create {}: {e}", runner_dir.display()))?;
        match crate::files::write_new(&path, format!("{token}\n").as_bytes()) {
            Ok(true) => return Ok((token, true)),
            Ok(false) => {}
            Err(e) => return Err(format!("cannot write {}: {e}", path.display())),
        }
    }
    Err(format!("{}: cannot be created or read", path.display()))
}

fn read_admin_token(path: &Path) -> Result<Option<String>, String> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    // Non-blocking, so that even a FIFO in its place cannot hang the start.
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!(
            "cannot read {}: not a regular file",
            path.display()
        ));
    }
    {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            log::warn!(
                "{} is readable by others (mode {mode:03o}): chmod 600 it",
                path.display()
            );
        }
    }
    let mut bytes = Vec::new();
    file.take(4097)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text = String::from_utf8(bytes).unwrap_or_default();
    parse_admin_token(&text).map(Some).map_err(|e| {
        format!(
            "{}: {e}; fix it, or delete it to have serve make a new one",
            path.display()
        )
    })
}

/// The token in an admin-token file: one line of 32 to 1024 characters
/// from the base64url / hex alphabet (a trailing newline is fine).
pub fn parse_admin_token(text: &str) -> Result<String, &'static str> {
    let token = text.trim();
    if !(32..=1024).contains(&token.len()) {
        return Err("malformed admin token: expected one line of 32 to 1024 characters");
    }
    if !token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b))
    {
        return Err("malformed admin token: only A-Z a-z 0-9 - . _ ~ + / = may appear in it");
    }
    Ok(token.to_string())
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
    fn a_stale_copy_serves_while_its_refresh_hangs() {
        // A hub that accepts and never answers.
        let hub = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let auth = Auth::new(format!("http://{}", hub.local_addr().unwrap()));
        let Some(old) = Instant::now().checked_sub(JWKS_TTL + Duration::from_secs(1)) else {
            return; // a machine up for less than the TTL
        };
        let stale = Arc::new(Keys(Vec::new()));
        {
            let mut slot = auth.inner.keys.lock();
            slot.value = Some(Arc::clone(&stale));
            slot.fetched = Some(old);
        }
        let got = auth.inner.get::<Keys>(Want::Current).unwrap();
        assert!(Arc::ptr_eq(&got, &stale));
        // The refresh reached the hub and is still waiting for it...
        let (_conn, _) = hub.accept().unwrap();
        assert!(auth.inner.keys.lock().in_flight);
        // ... while the stale copy keeps serving, with no second fetch.
        let again = auth.inner.get::<Keys>(Want::Current).unwrap();
        assert!(Arc::ptr_eq(&again, &stale));
        hub.set_nonblocking(true).unwrap();
        assert!(hub.accept().is_err(), "a second fetch was started");
    }

    #[test]
    fn the_admin_token_is_made_once_and_checked() {
        let dir = std::env::temp_dir().join(format!("pr-admin-token-{}", crate::random::hex(6)));
        let (token, created) = admin_token(&dir).unwrap();
        assert!(created);
        assert_eq!(token.len(), 64);
        let path = dir.join(ADMIN_TOKEN_FILE);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(admin_token(&dir).unwrap(), (token.clone(), false));
        std::fs::write(&path, "nope\n").unwrap();
        let err = admin_token(&dir).unwrap_err();
        assert!(err.contains("malformed admin token"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "nope\n");
        std::fs::remove_dir_all(&dir).unwrap();

        let auth = Auth::new("http://127.0.0.1:9".into());
        let header = format!("Bearer {token}");
        assert!(
            auth.check(Some(&header), Need::Admin, Timestamp::now())
                .is_err()
        );
        auth.allow_local_admin(&token);
        let claims = auth
            .check(Some(&header), Need::Admin, Timestamp::now())
            .unwrap();
        assert_eq!(claims.scopes, vec![ADMIN.to_string()]);
        assert!(matches!(
            auth.check(
                Some(&format!("Bearer {}", &token[1..])),
                Need::Read,
                Timestamp::now()
            ),
            Err(Denied::Unauthorized(_))
        ));
    }

    #[test]
    fn admin_token_text() {
        assert!(parse_admin_token(&format!("{}\n", "a".repeat(32))).is_ok());
        assert!(parse_admin_token(&"a".repeat(31)).is_err());
        assert!(parse_admin_token(&"a".repeat(1025)).is_err());
        assert!(parse_admin_token(&format!("{} b", "a".repeat(40))).is_err());
        assert!(parse_admin_token(&format!("{}\n{}", "a".repeat(40), "b".repeat(40))).is_err());
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
