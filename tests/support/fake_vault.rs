//! A fake Parachute vault: an in-memory HTTP server that speaks the vault's
//! REST wire format as described in `vault-api.md`, for tests and benchmarks.
//!
//! What it serves, under `/vault/{name}/api` (any other vault name answers
//! 404 `{"error":"Vault not found","vault":…}`):
//! - `GET /notes` — bare array; `tag` (comma-separated, match-any, or
//!   `tag_match=all`; only the first `tag=` counts), `include_content=true`
//!   (full `Note`s, else `NoteIndex`), `limit` (default 50, no cap),
//!   `offset`, `path` (exact). Creation order (= `createdAt` ascending).
//! - `GET /notes/{id or percent-encoded path}` — id first, then path.
//! - `POST /notes` — 201 with the `Note`; path normalisation, 409 on a used
//!   path, 400 `empty_note`, 500 for malformed JSON or wrong types.
//! - `PATCH /notes/{id or path}` — 200 with the updated `Note`: `metadata`
//!   merged shallowly, one of `content`/`append`/`prepend`/`content_edit`
//!   (else 400 `mutually_exclusive`), `tags: {add, remove}`, `path` (409
//!   `path_conflict`); `if_updated_at` other than the note's `updatedAt` →
//!   409 `conflict` and nothing written; without it only a pure
//!   `append`/`prepend` or `force: true` is accepted, else 428
//!   `precondition_required`; 404 for a missing note. Every update moves
//!   `updatedAt` (at least 1 ms), so a stale `if_updated_at` never matches.
//! - `GET /health` and `GET /vault/{name}/api/health` — open, `{"status":"ok"}`.
//! - `GET /_counts` — open, not a vault route: requests so far by method,
//!   `{"GET":n,…}` (itself not counted), for benchmarks that count what a
//!   runner asks.
//!
//! Choices where the vault's behaviour is not pinned down:
//! - The vault name is checked before the token (unknown vault → 404 even
//!   without a token). A missing `Authorization` header, or one that is not
//!   `Bearer <non-empty>` (e.g. lowercase `bearer`), is "API key required";
//!   a well-formed but unknown token is "Invalid API key".
//! - A known path with another method answers 405 `{"error":"Method not
//!   allowed"}` with an `Allow` header; unknown paths answer 404
//!   `{"error":"Not found"}` (after auth, when under `/vault/{name}/api`).
//! - Query values are decoded leniently (`+` is a space, a bad `%` escape is
//!   kept as text); the `{id or path}` segment is decoded strictly (a bad
//!   escape or invalid UTF-8 is a 500, as in the vault).
//! - `limit`/`offset` that are not non-negative integers fall back to their
//!   defaults. `preview` is the first 200 characters of the content.
//! - A client-supplied `id` that is already used answers 500.
//!
//! Left out: deleting notes over HTTP, the MCP endpoint, scopes
//! other than "read-only token cannot write" (see
//! [`FakeVault::add_read_only_token`]), the vault's unstable ordering of notes
//! created in the same millisecond, and persistence.
//!
//! The HTTP/1.1 server is a small one written on `std::net` rather than
//! tiny_http, because tiny_http gives no access to the socket: it cannot drop
//! a connection without answering ([`Fault::Close`]), and after its `Server`
//! is dropped, kept-alive connections stay open and requests sent on them hang
//! forever instead of failing like they would against a vault that went down.
//! Here every connection has its own thread, [`FakeVault::stop`] closes the
//! listening socket *and* every open connection, and [`FakeVault::restart`]
//! listens again on the same port with the same notes. It handles
//! `Content-Length` and chunked request bodies (up to 128 MiB, more is a 413),
//! `Expect: 100-continue` and keep-alive; a request it cannot parse is answered
//! 400 (431 for a head over 64 KiB) and the connection is closed.
//!
//! This file is included both by the integration tests (`mod fake_vault;`)
//! and by `examples/fake_vault.rs` (`#[path]`), so it only uses std, serde_json
//! and jiff, never `crate::` or `super::`.

// Each including crate uses a different subset of the API.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use serde_json::Value;

/// Token accepted by [`FakeVault::start`].
pub const DEFAULT_TOKEN: &str = "pvt_test_token";
/// Vault name served by [`FakeVault::start`].
pub const DEFAULT_VAULT: &str = "default";
/// Largest request body accepted (larger ones get 413).
pub const MAX_BODY: usize = 128 * 1024 * 1024;
/// Largest request head (request line + headers) accepted (larger ones get 431).
const MAX_HEAD: usize = 64 * 1024;
/// Characters of content shown in a `NoteIndex`'s `preview`.
const PREVIEW_CHARS: usize = 200;
/// Default page size of `GET /notes`.
const DEFAULT_LIMIT: usize = 50;

/// A note as the fake stores it (already normalised the way the vault does:
/// path normalised, tags sorted and de-duplicated, empty metadata as `None`).
#[derive(Clone, Debug, PartialEq)]
pub struct StoredNote {
    pub id: String,
    pub path: Option<String>,
    pub content: String,
    pub tags: Vec<String>,
    pub metadata: Option<Value>,
    pub created_at: String,
    pub updated_at: String,
}

/// One request as it arrived (recorded before any fault is applied).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    pub method: String,
    /// Path and query exactly as sent in the request line.
    pub url: String,
    /// Header names as sent (any case), values with surrounding blanks removed.
    pub headers: Vec<(String, String)>,
    /// The body after removing any chunked framing.
    pub body: Vec<u8>,
}

impl RecordedRequest {
    /// First header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The path part of `url` (before `?`), not decoded.
    pub fn path(&self) -> &str {
        split_target(&self.url).0
    }

    /// The first value of a query parameter, decoded like the vault does.
    pub fn query_param(&self, name: &str) -> Option<String> {
        parse_query(split_target(&self.url).1)
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    /// The body parsed as JSON, if it is JSON.
    pub fn body_json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The [`Route`] this request falls under, if any (not `Route::Any`).
    pub fn route(&self) -> Option<Route> {
        route_of(&self.method, self.path())
    }
}

/// Which requests a [`Fault`] applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /vault/*/api/notes`
    List,
    /// `GET /vault/*/api/notes/{one segment}`
    Get,
    /// `POST /vault/*/api/notes`
    Create,
    /// `PATCH /vault/*/api/notes/{one segment}`
    Patch,
    /// Every request, including `/health` and unknown paths.
    Any,
}

/// Misbehaviour injected with [`FakeVault::set_fault`]. Apart from `Stall`,
/// a faulted request is not processed (a faulted create stores nothing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and a JSON error body: the vault's own body
    /// for 401 (`Invalid API key`), 404 (`Not found`) and 500 (`Internal
    /// server error`), else `{"error":"<reason phrase>"}`. Codes outside
    /// 200..=599 are sent as 500; 204 and 304 get no body.
    Status(u16),
    /// Hold the request this long, then process and answer it normally.
    /// Ends early (connection closed, request not processed) if the server
    /// is stopped meanwhile.
    Stall(Duration),
    /// 200 with a `Content-Type: application/json` body that is cut short.
    MalformedJson,
    /// Close the connection without answering.
    Close,
    /// Process the request (a create stores its note), then close the
    /// connection without answering: an answer lost on the way back.
    CloseAfterStore,
    /// Answer with this status (as [`Fault::Status`]) and a JSON error
    /// body that repeats the request's `Authorization` header, as a
    /// careless vault or proxy might: `{"error":"<reason phrase>",
    /// "message":"rejected credentials: Authorization: <header>"}`. The
    /// request is not processed.
    EchoAuthorization(u16),
}

/// The fake vault. Dropping it stops the server and closes every connection.
pub struct FakeVault {
    shared: Arc<Shared>,
    addr: SocketAddr,
    running: Mutex<Option<Running>>,
}

/// A loopback address no other listener of the test run uses (all of
/// 127.0.0.0/8 is loopback on Linux; the other servers of the tests listen
/// on 127.0.0.1). A port freed by [`FakeVault::stop`] then stays free: no
/// other test's listener can take it before [`FakeVault::restart`], and a
/// connection to it is refused, as the tests of a dead vault expect.
fn own_loopback() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    format!(
        "127.{}.{}.{}:0",
        100 + pid % 100,
        (n / 250) % 250,
        2 + n % 250
    )
}

impl FakeVault {
    /// Starts on a loopback address of its own (port 0) with token
    /// [`DEFAULT_TOKEN`] and vault [`DEFAULT_VAULT`]. Panics if it cannot
    /// listen (a test setup failure).
    pub fn start() -> FakeVault {
        let addr = own_loopback();
        match FakeVault::start_with(&addr, DEFAULT_TOKEN, DEFAULT_VAULT) {
            Ok(vault) => vault,
            Err(err) => panic!("fake vault: cannot listen on {addr}: {err}"),
        }
    }

    /// Starts on `addr` (e.g. `127.0.0.1:0`), accepting `token` for vault `vault`.
    pub fn start_with(addr: &str, token: &str, vault: &str) -> io::Result<FakeVault> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            token: token.to_string(),
            vault: vault.to_string(),
        });
        let running = Running::spawn(listener, Arc::clone(&shared))?;
        Ok(FakeVault {
            shared,
            addr,
            running: Mutex::new(Some(running)),
        })
    }

    /// `http://HOST:PORT`, without a trailing slash or the `/vault/...` part.
    pub fn url(&self) -> String {
        match self.addr.ip() {
            IpAddr::V4(ip) => format!("http://{ip}:{}", self.addr.port()),
            IpAddr::V6(ip) => format!("http://[{ip}]:{}", self.addr.port()),
        }
    }

    /// `{url}/vault/{name}/api`.
    pub fn api_url(&self) -> String {
        format!("{}/vault/{}/api", self.url(), self.shared.vault)
    }

    /// The socket address the fake listens on (the same after a restart).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The accepted (read-write) token.
    pub fn token(&self) -> String {
        self.shared.token.clone()
    }

    /// The vault name served.
    pub fn vault_name(&self) -> String {
        self.shared.vault.clone()
    }

    /// Also accept `token`, but answer 403 `insufficient_scope` when it writes.
    pub fn add_read_only_token(&self, token: &str) {
        self.shared.lock().read_only_tokens.push(token.to_string());
    }

    /// Stores a note as `POST /notes` would (path normalised, tags sorted;
    /// `None`, `null` or `{}` metadata is no metadata) and returns its id.
    /// An empty `path` means no path. Panics if the path is already used or
    /// the note is empty (test setup errors).
    pub fn add_note(
        &self,
        path: &str,
        content: &str,
        tags: &[&str],
        metadata: Option<Value>,
    ) -> String {
        let new = NewNote {
            id: None,
            path: Some(path.to_string()),
            content: content.to_string(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            metadata,
        };
        let result = self.shared.lock().create(new);
        match result {
            Ok(note) => {
                self.shared.changed.notify_all();
                note.id
            }
            Err(err) => panic!("fake vault: add_note({path:?}) failed: {err:?}"),
        }
    }

    /// [`add_note`](Self::add_note) with tags `["job"]` and no metadata.
    pub fn add_job(&self, path: &str, content: &str) -> String {
        self.add_note(path, content, &["job"], None)
    }

    /// Replaces the content of the note with this id or path and bumps its
    /// `updatedAt`. Returns false if there is no such note.
    pub fn set_content(&self, id_or_path: &str, content: &str) -> bool {
        let changed = {
            let mut state = self.shared.lock();
            let stamp = state.next_stamp();
            match state.find_mut(id_or_path) {
                Some(note) => {
                    note.content = content.to_string();
                    note.updated_at = stamp.created_at;
                    true
                }
                None => false,
            }
        };
        if changed {
            self.shared.changed.notify_all();
        }
        changed
    }

    /// Removes the note with this id or path. Returns false if there is none.
    pub fn remove_note(&self, id_or_path: &str) -> bool {
        let removed = self.shared.lock().remove(id_or_path);
        if removed {
            self.shared.changed.notify_all();
        }
        removed
    }

    /// All notes, in creation order.
    pub fn notes(&self) -> Vec<StoredNote> {
        self.shared.lock().notes.clone()
    }

    /// The note at this path (normalised like the vault does), if any.
    pub fn note_at(&self, path: &str) -> Option<StoredNote> {
        let path = normalize_path(path)?;
        let state = self.shared.lock();
        state
            .by_path
            .get(&path)
            .and_then(|&i| state.notes.get(i))
            .cloned()
    }

    /// The note with this id, if any.
    pub fn note_by_id(&self, id: &str) -> Option<StoredNote> {
        let state = self.shared.lock();
        state
            .by_id
            .get(id)
            .and_then(|&i| state.notes.get(i))
            .cloned()
    }

    /// Notes carrying exactly this tag, in creation order.
    pub fn notes_tagged(&self, tag: &str) -> Vec<StoredNote> {
        self.shared.lock().tagged(tag)
    }

    /// Blocks until at least `n` notes carry `tag` or `timeout` passes, and
    /// returns the notes carrying it at that moment.
    pub fn wait_for_notes_tagged(&self, tag: &str, n: usize, timeout: Duration) -> Vec<StoredNote> {
        let deadline = deadline_after(timeout);
        let mut state = self.shared.lock();
        loop {
            let found = state.tagged(tag);
            let left = deadline.saturating_duration_since(Instant::now());
            if found.len() >= n || left.is_zero() {
                return found;
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Every request recorded so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    /// Blocks until at least `n` requests are recorded or `timeout` passes,
    /// and returns the recorded requests.
    pub fn wait_for_requests(&self, n: usize, timeout: Duration) -> Vec<RecordedRequest> {
        let deadline = deadline_after(timeout);
        let mut state = self.shared.lock();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if state.requests.len() >= n || left.is_zero() {
                return state.requests.clone();
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.shared.lock().requests.clear();
    }

    /// Turns request recording on (the default) or off (for long benchmark runs).
    pub fn set_recording(&self, enabled: bool) {
        self.shared.lock().recording = enabled;
    }

    /// Injects `fault` into requests matching `route`, `times` times (`None`:
    /// until [`clear_faults`](Self::clear_faults)). Rules are consulted in the
    /// order they were set; the first matching one with uses left applies.
    pub fn set_fault(&self, route: Route, fault: Fault, times: Option<usize>) {
        if times == Some(0) {
            return;
        }
        self.shared.lock().faults.push(FaultRule {
            route,
            fault,
            remaining: times,
        });
    }

    /// Removes every fault rule.
    pub fn clear_faults(&self) {
        self.shared.lock().faults.clear();
    }

    /// Stops serving: closes the listening socket (new connections are
    /// refused) and every open connection, and ends any stall early.
    /// Returns once the listening socket is closed. No-op if stopped.
    pub fn stop(&self) {
        let running = self
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(running) = running {
            running.shut_down(self.addr);
        }
    }

    /// Listens again on the same address, with the same notes, requests and
    /// faults. No-op if running. Panics if the port cannot be bound again.
    pub fn restart(&self) {
        if let Err(err) = self.try_restart() {
            panic!("fake vault: cannot listen again on {}: {err}", self.addr);
        }
    }

    /// [`restart`](Self::restart) that reports a bind failure instead of
    /// panicking (it retries for about a second first).
    pub fn try_restart(&self) -> io::Result<()> {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        if running.is_some() {
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        let listener = loop {
            match TcpListener::bind(self.addr) {
                Ok(listener) => break listener,
                Err(err) if err.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(20));
                }
                Err(err) => return Err(err),
            }
        };
        *running = Some(Running::spawn(listener, Arc::clone(&self.shared))?);
        Ok(())
    }

    /// Whether the fake is currently listening.
    pub fn is_running(&self) -> bool {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }
}

impl Drop for FakeVault {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for FakeVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeVault")
            .field("url", &self.url())
            .field("vault", &self.shared.vault)
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------
// State

struct Shared {
    state: Mutex<State>,
    /// Notified whenever notes or recorded requests change.
    changed: Condvar,
    token: String,
    vault: String,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, request: &RecordedRequest) {
        let mut state = self.lock();
        if request.path() != "/_counts" {
            *state.counts.entry(request.method.clone()).or_insert(0) += 1;
        }
        if state.recording {
            state.requests.push(request.clone());
            drop(state);
            self.changed.notify_all();
        }
    }

    /// The fault to apply to a request, if any (uses one of its `times`).
    fn take_fault(&self, route: Option<Route>) -> Option<Fault> {
        let mut state = self.lock();
        let index = state
            .faults
            .iter()
            .position(|rule| rule.route == Route::Any || Some(rule.route) == route)?;
        let rule = &mut state.faults[index];
        let fault = rule.fault.clone();
        if let Some(remaining) = &mut rule.remaining {
            *remaining = remaining.saturating_sub(1);
            if *remaining == 0 {
                state.faults.remove(index);
            }
        }
        Some(fault)
    }
}

struct State {
    notes: Vec<StoredNote>,
    by_id: HashMap<String, usize>,
    by_path: HashMap<String, usize>,
    requests: Vec<RecordedRequest>,
    recording: bool,
    /// Requests by method, recorded or not.
    counts: std::collections::BTreeMap<String, u64>,
    faults: Vec<FaultRule>,
    read_only_tokens: Vec<String>,
    /// Microseconds since the epoch of the last stamp handed out.
    last_micros: i64,
}

impl Default for State {
    fn default() -> State {
        State {
            notes: Vec::new(),
            by_id: HashMap::new(),
            by_path: HashMap::new(),
            requests: Vec::new(),
            recording: true,
            counts: std::collections::BTreeMap::new(),
            faults: Vec::new(),
            read_only_tokens: Vec::new(),
            last_micros: i64::MIN,
        }
    }
}

struct FaultRule {
    route: Route,
    fault: Fault,
    remaining: Option<usize>,
}

/// A note to create, before normalisation.
struct NewNote {
    id: Option<String>,
    path: Option<String>,
    content: String,
    tags: Vec<String>,
    metadata: Option<Value>,
}

#[derive(Debug)]
enum CreateError {
    Empty,
    PathConflict(String),
    IdConflict(String),
}

/// A creation instant: a generated id and its `createdAt`.
struct Stamp {
    id: String,
    created_at: String,
}

impl State {
    /// A strictly increasing instant (bumped by 1 µs when the clock has not
    /// moved), as an id `2026-11-23-21-54-39-462123` and a timestamp
    /// `2026-11-23T21:54:39.462Z`.
    fn next_stamp(&mut self) -> Stamp {
        let now = Timestamp::now();
        let micros = now.as_microsecond().max(self.last_micros.saturating_add(1));
        self.last_micros = micros;
        let instant = Timestamp::from_microsecond(micros).unwrap_or(now);
        Stamp {
            id: format!(
                "{}-{:06}",
                instant.strftime("%Y-%m-%d-%H-%M-%S"),
                micros.rem_euclid(1_000_000)
            ),
            created_at: format!("{instant:.3}"),
        }
    }

    fn create(&mut self, new: NewNote) -> Result<StoredNote, CreateError> {
        let path = new.path.as_deref().and_then(normalize_path);
        if new.content.is_empty() && path.is_none() {
            return Err(CreateError::Empty);
        }
        if let Some(path) = &path
            && self.by_path.contains_key(path)
        {
            return Err(CreateError::PathConflict(path.clone()));
        }
        let given_id = new.id.filter(|id| !id.is_empty());
        if let Some(id) = &given_id
            && self.by_id.contains_key(id)
        {
            return Err(CreateError::IdConflict(id.clone()));
        }
        let mut stamp = self.next_stamp();
        while given_id.is_none() && self.by_id.contains_key(&stamp.id) {
            stamp = self.next_stamp();
        }
        let mut tags = new.tags;
        tags.sort();
        tags.dedup();
        let metadata = new.metadata.filter(|m| match m {
            Value::Null => false,
            Value::Object(map) => !map.is_empty(),
            _ => true,
        });
        let note = StoredNote {
            id: given_id.unwrap_or(stamp.id),
            path,
            content: new.content,
            tags,
            metadata,
            created_at: stamp.created_at.clone(),
            updated_at: stamp.created_at,
        };
        let index = self.notes.len();
        self.by_id.insert(note.id.clone(), index);
        if let Some(path) = &note.path {
            self.by_path.insert(path.clone(), index);
        }
        self.notes.push(note.clone());
        Ok(note)
    }

    /// Index of the note with this id, else with this path.
    fn find(&self, id_or_path: &str) -> Option<usize> {
        self.by_id
            .get(id_or_path)
            .or_else(|| self.by_path.get(id_or_path))
            .copied()
    }

    fn find_mut(&mut self, id_or_path: &str) -> Option<&mut StoredNote> {
        let index = self.find(id_or_path)?;
        self.notes.get_mut(index)
    }

    fn remove(&mut self, id_or_path: &str) -> bool {
        let Some(index) = self.find(id_or_path) else {
            return false;
        };
        self.notes.remove(index);
        self.by_id.clear();
        self.by_path.clear();
        for (i, note) in self.notes.iter().enumerate() {
            self.by_id.insert(note.id.clone(), i);
            if let Some(path) = &note.path {
                self.by_path.insert(path.clone(), i);
            }
        }
        true
    }

    fn tagged(&self, tag: &str) -> Vec<StoredNote> {
        self.notes
            .iter()
            .filter(|n| n.tags.iter().any(|t| t == tag))
            .cloned()
            .collect()
    }
}

/// The vault's path normalisation: trimmed, `//` collapsed, leading and
/// trailing `/` removed, a trailing `.md` removed. `None` when nothing is left.
pub fn normalize_path(raw: &str) -> Option<String> {
    let mut path = raw.trim().to_string();
    while path.contains("//") {
        path = path.replace("//", "/");
    }
    let mut path = path.trim_matches('/');
    if let Some(stem) = path.strip_suffix(".md") {
        path = stem.trim_end_matches('/');
    }
    let path = path.trim();
    (!path.is_empty()).then(|| path.to_string())
}

// ---------------------------------------------------------------------------
// Listening and connections

/// One listening period (between start/restart and stop).
struct Running {
    generation: Arc<Generation>,
    acceptor: JoinHandle<()>,
}

/// What a listening period shares with its connection threads.
struct Generation {
    stopped: Mutex<bool>,
    stopped_changed: Condvar,
    /// Clones of the open connections' sockets, to shut them down at stop.
    connections: Mutex<HashMap<u64, TcpStream>>,
}

impl Generation {
    fn is_stopped(&self) -> bool {
        *self.stopped.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits `duration`; true if the server was stopped meanwhile.
    fn sleep_unless_stopped(&self, duration: Duration) -> bool {
        let stopped = self.stopped.lock().unwrap_or_else(PoisonError::into_inner);
        let (stopped, _) = self
            .stopped_changed
            .wait_timeout_while(stopped, duration, |stopped| !*stopped)
            .unwrap_or_else(PoisonError::into_inner);
        *stopped
    }

    fn connections(&self) -> MutexGuard<'_, HashMap<u64, TcpStream>> {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Running {
    fn spawn(listener: TcpListener, shared: Arc<Shared>) -> io::Result<Running> {
        let generation = Arc::new(Generation {
            stopped: Mutex::new(false),
            stopped_changed: Condvar::new(),
            connections: Mutex::new(HashMap::new()),
        });
        let acceptor = {
            let generation = Arc::clone(&generation);
            thread::Builder::new()
                .name("fake-vault-accept".to_string())
                .spawn(move || accept_loop(listener, shared, generation))?
        };
        Ok(Running {
            generation,
            acceptor,
        })
    }

    fn shut_down(self, addr: SocketAddr) {
        *self
            .generation
            .stopped
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
        self.generation.stopped_changed.notify_all();
        // Wake the acceptor, which then sees the flag and drops the listener.
        let wake = SocketAddr::new(loopback_for(addr.ip()), addr.port());
        if TcpStream::connect_timeout(&wake, Duration::from_secs(2)).is_ok() {
            let _ = self.acceptor.join();
        }
        // The acceptor registered every connection it accepted before exiting.
        for (_, stream) in self.generation.connections().drain() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// `now + timeout`, capped at about a year from now (for `Duration::MAX`).
fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
}

fn loopback_for(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        other => other,
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>, generation: Arc<Generation>) {
    let mut next_id: u64 = 0;
    for stream in listener.incoming() {
        if generation.is_stopped() {
            break;
        }
        let stream = match stream {
            Ok(stream) => stream,
            Err(_) => {
                // E.g. out of file descriptors: back off instead of spinning.
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(handle) = stream.try_clone() else {
            continue;
        };
        next_id += 1;
        let id = next_id;
        generation.connections().insert(id, handle);
        let (shared, conn_generation) = (Arc::clone(&shared), Arc::clone(&generation));
        let spawned = thread::Builder::new()
            .name(format!("fake-vault-conn-{id}"))
            .spawn(move || {
                serve_connection(stream, &shared, &conn_generation);
                conn_generation.connections().remove(&id);
            });
        if spawned.is_err()
            && let Some(stream) = generation.connections().remove(&id)
        {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
    // Stop listening now, not when the last descriptor goes: a child that
    // another test thread is forking holds a copy of the listener until it
    // execs, and while it does, connections would still be accepted into
    // the backlog. shutdown(2) ends the listening state for every copy.
    let socket = TcpStream::from(std::os::fd::OwnedFd::from(listener));
    let _ = socket.shutdown(Shutdown::Both);
}

/// A request read off the wire.
struct Incoming {
    request: RecordedRequest,
    keep_alive: bool,
    http10: bool,
}

/// Why reading a request failed.
enum ReadError {
    /// The connection is gone or broke mid-request: close without answering.
    Io,
    /// The request is malformed: answer this status and close.
    Reject(u16, &'static str),
}

impl From<io::Error> for ReadError {
    fn from(_: io::Error) -> ReadError {
        ReadError::Io
    }
}

fn serve_connection(stream: TcpStream, shared: &Shared, generation: &Generation) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::with_capacity(64 * 1024, read_half);
    let mut writer = stream;
    loop {
        let incoming = match read_request(&mut reader, &mut writer) {
            Ok(Some(incoming)) => incoming,
            Ok(None) | Err(ReadError::Io) => return,
            Err(ReadError::Reject(status, message)) => {
                let reply = Reply::json(status, error_body(message));
                let _ = write_reply(&mut writer, &reply, false, false);
                let _ = writer.shutdown(Shutdown::Write);
                // Read what the client is still sending, so that closing does
                // not reset the connection before it has read the answer.
                let _ = writer.set_read_timeout(Some(Duration::from_millis(200)));
                let _ = io::copy(&mut (&mut reader).take(MAX_BODY as u64), &mut io::sink());
                return;
            }
        };
        let request = &incoming.request;
        shared.record(request);
        let reply = match shared.take_fault(request.route()) {
            None => handle(shared, request),
            Some(Fault::Close) => {
                let _ = writer.shutdown(Shutdown::Both);
                return;
            }
            Some(Fault::CloseAfterStore) => {
                let _ = handle(shared, request);
                let _ = writer.shutdown(Shutdown::Both);
                return;
            }
            Some(Fault::Status(status)) => {
                let status = if (200..=599).contains(&status) {
                    status
                } else {
                    500
                };
                Reply::json(status, fault_status_body(status))
            }
            Some(Fault::EchoAuthorization(status)) => {
                let status = if (200..=599).contains(&status) {
                    status
                } else {
                    500
                };
                let header = request.header("authorization").unwrap_or("");
                let body = Obj::new()
                    .str("error", reason_phrase(status))
                    .str(
                        "message",
                        &format!("rejected credentials: Authorization: {header}"),
                    )
                    .finish();
                Reply::json(status, body)
            }
            Some(Fault::MalformedJson) => Reply::json(200, malformed_json(request.route())),
            Some(Fault::Stall(duration)) => {
                if generation.sleep_unless_stopped(duration) {
                    return;
                }
                handle(shared, request)
            }
        };
        if write_reply(&mut writer, &reply, incoming.keep_alive, incoming.http10).is_err() {
            return;
        }
        if !incoming.keep_alive {
            let _ = writer.shutdown(Shutdown::Write);
            return;
        }
    }
}

/// Reads one line (without its `\n` or `\r\n`), at most `limit` bytes.
/// `Ok(None)` at end of stream before any byte.
fn read_line(reader: &mut impl BufRead, limit: usize) -> Result<Option<Vec<u8>>, ReadError> {
    let mut line = Vec::new();
    let read = reader
        .by_ref()
        .take(limit as u64 + 1)
        .read_until(b'\n', &mut line)?;
    if read == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(if line.len() > limit {
            ReadError::Reject(431, "Request header fields too large")
        } else {
            ReadError::Io
        });
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(Some(line))
}

/// Reads the next request; `Ok(None)` when the client closed the connection
/// between requests. `writer` is used for `100 Continue`.
fn read_request(
    reader: &mut impl BufRead,
    writer: &mut impl Write,
) -> Result<Option<Incoming>, ReadError> {
    let bad = |msg| ReadError::Reject(400, msg);
    let mut budget = MAX_HEAD;

    // Request line (a few empty lines before it are tolerated).
    let mut line = Vec::new();
    for _ in 0..4 {
        match read_line(reader, budget)? {
            None => return Ok(None),
            Some(l) if l.is_empty() => continue,
            Some(l) => {
                line = l;
                break;
            }
        }
    }
    budget = budget.saturating_sub(line.len() + 2);
    let line = String::from_utf8(line).map_err(|_| bad("Bad request line"))?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("Bad request line"));
    };
    if method.is_empty()
        || !method
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_!#$%&'*+.^`|~".contains(&b))
    {
        return Err(bad("Bad request method"));
    }
    if !target.starts_with('/') || target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(bad("Bad request target"));
    }
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        v if v.starts_with("HTTP/") => {
            return Err(ReadError::Reject(505, "HTTP version not supported"));
        }
        _ => return Err(bad("Bad request line")),
    };

    // Headers.
    let mut headers = Vec::new();
    loop {
        let Some(line) = read_line(reader, budget)? else {
            return Err(ReadError::Io);
        };
        budget = budget.saturating_sub(line.len() + 2);
        if line.is_empty() {
            break;
        }
        if budget == 0 {
            return Err(ReadError::Reject(431, "Request header fields too large"));
        }
        if line[0] == b' ' || line[0] == b'\t' {
            return Err(bad("Folded header lines are not supported"));
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(bad("Bad header line"));
        };
        let name = std::str::from_utf8(&line[..colon]).map_err(|_| bad("Bad header name"))?;
        if name.is_empty() || name.bytes().any(|b| b <= b' ' || b >= 0x7f) {
            return Err(bad("Bad header name"));
        }
        let value = String::from_utf8_lossy(&line[colon + 1..])
            .trim_matches([' ', '\t'])
            .to_string();
        headers.push((name.to_string(), value));
    }
    let header_values = |name: &'static str| header_values(&headers, name);

    // Body framing.
    let chunked = match header_values("transfer-encoding").last() {
        None => false,
        Some(te) => {
            let last = te.rsplit(',').next().unwrap_or("").trim();
            if !last.eq_ignore_ascii_case("chunked") {
                return Err(ReadError::Reject(501, "Unsupported transfer encoding"));
            }
            true
        }
    };
    let mut content_length: Option<usize> = None;
    for value in header_values("content-length") {
        for piece in value.split(',') {
            let piece = piece.trim();
            if piece.is_empty() || !piece.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("Bad Content-Length"));
            }
            // Too many digits for usize means too large anyway.
            let n = piece.parse::<usize>().unwrap_or(usize::MAX);
            if content_length.is_some_and(|c| c != n) {
                return Err(bad("Conflicting Content-Length"));
            }
            content_length = Some(n);
        }
    }
    if !chunked && content_length.is_some_and(|n| n > MAX_BODY) {
        return Err(ReadError::Reject(413, "Payload too large"));
    }
    let expects_body = chunked || content_length.is_some_and(|n| n > 0);
    if expects_body
        && !http10
        && header_values("expect").any(|v| v.eq_ignore_ascii_case("100-continue"))
    {
        writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        writer.flush()?;
    }
    let body = if chunked {
        read_chunked(reader)?
    } else {
        let len = content_length.unwrap_or(0);
        let mut body = Vec::with_capacity(len.min(1 << 20));
        reader.by_ref().take(len as u64).read_to_end(&mut body)?;
        if body.len() != len {
            return Err(ReadError::Io);
        }
        body
    };

    let connection = header_values("connection")
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect::<Vec<_>>();
    let keep_alive = if chunked && content_length.is_some() {
        false // ambiguous framing: answer, then close
    } else if http10 {
        connection.iter().any(|t| t == "keep-alive")
    } else {
        !connection.iter().any(|t| t == "close")
    };

    Ok(Some(Incoming {
        request: RecordedRequest {
            method: method.to_string(),
            url: target.to_string(),
            headers,
            body,
        },
        keep_alive,
        http10,
    }))
}

/// The values of every header called `name` (case-insensitive), in order.
fn header_values<'a>(
    headers: &'a [(String, String)],
    name: &'a str,
) -> impl Iterator<Item = &'a str> {
    headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn read_chunked(reader: &mut impl BufRead) -> Result<Vec<u8>, ReadError> {
    let bad = || ReadError::Reject(400, "Bad chunked body");
    let mut body = Vec::new();
    loop {
        let Some(line) = read_line(reader, 4096)? else {
            return Err(ReadError::Io);
        };
        let line = String::from_utf8(line).map_err(|_| bad())?;
        let size = line.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size, 16) else {
            return Err(bad());
        };
        if size == 0 {
            // Trailer fields, up to an empty line.
            loop {
                match read_line(reader, MAX_HEAD)? {
                    None => return Err(ReadError::Io),
                    Some(l) if l.is_empty() => return Ok(body),
                    Some(_) => {}
                }
            }
        }
        if body.len().saturating_add(size) > MAX_BODY {
            return Err(ReadError::Reject(413, "Payload too large"));
        }
        let before = body.len();
        reader.by_ref().take(size as u64).read_to_end(&mut body)?;
        if body.len() - before != size {
            return Err(ReadError::Io);
        }
        match read_line(reader, 2)? {
            Some(l) if l.is_empty() => {}
            Some(_) => return Err(bad()),
            None => return Err(ReadError::Io),
        }
    }
}

struct Reply {
    status: u16,
    body: String,
    allow: Option<&'static str>,
}

impl Reply {
    fn json(status: u16, body: String) -> Reply {
        Reply {
            status,
            body,
            allow: None,
        }
    }
}

fn write_reply(
    writer: &mut impl Write,
    reply: &Reply,
    keep_alive: bool,
    http10: bool,
) -> io::Result<()> {
    let no_body = matches!(reply.status, 204 | 304);
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\n",
        reply.status,
        reason_phrase(reply.status)
    );
    if !no_body {
        out.push_str(&format!("Content-Length: {}\r\n", reply.body.len()));
    }
    if let Some(allow) = reply.allow {
        out.push_str(&format!("Allow: {allow}\r\n"));
    }
    if !keep_alive {
        out.push_str("Connection: close\r\n");
    } else if http10 {
        out.push_str("Connection: keep-alive\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if !no_body {
        bytes.extend_from_slice(reply.body.as_bytes());
    }
    writer.write_all(&bytes)?;
    writer.flush()
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Status",
    }
}

// ---------------------------------------------------------------------------
// Routing and handlers

/// Splits a request target into path and query (without `?`).
fn split_target(target: &str) -> (&str, &str) {
    target.split_once('?').unwrap_or((target, ""))
}

/// The fault route of a request, by method and path shape only.
fn route_of(method: &str, path: &str) -> Option<Route> {
    let segments: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
    match (method, segments.as_slice()) {
        ("GET", ["vault", _, "api", "notes"]) => Some(Route::List),
        ("POST", ["vault", _, "api", "notes"]) => Some(Route::Create),
        ("GET", ["vault", _, "api", "notes", _]) => Some(Route::Get),
        ("PATCH", ["vault", _, "api", "notes", _]) => Some(Route::Patch),
        _ => None,
    }
}

fn handle(shared: &Shared, request: &RecordedRequest) -> Reply {
    let (path, query) = split_target(&request.url);
    let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
    let method = request.method.as_str();
    match segments.as_slice() {
        ["health"] => only(method, "GET", || Reply::json(200, health_body())),
        ["_counts"] => only(method, "GET", || {
            let counts = shared.lock().counts.clone();
            Reply::json(200, serde_json::json!(counts).to_string())
        }),
        ["vault", name, "api", rest @ ..] => {
            let name = decode_path_segment(name).unwrap_or_else(|| name.to_string());
            if name != shared.vault {
                let body = Obj::new()
                    .str("error", "Vault not found")
                    .str("vault", &name)
                    .finish();
                return Reply::json(404, body);
            }
            if matches!(rest, ["health"]) {
                return only(method, "GET", || Reply::json(200, health_body()));
            }
            let can_write = match check_auth(shared, request) {
                Ok(can_write) => can_write,
                Err(reply) => return reply,
            };
            match rest {
                ["notes"] => match method {
                    "GET" => list_notes(shared, query),
                    "POST" if !can_write => Reply::json(403, forbidden_body()),
                    "POST" => create_note(shared, &request.body),
                    _ => method_not_allowed("GET, POST"),
                },
                ["notes", key] => match method {
                    "GET" => get_note(shared, key),
                    "PATCH" if !can_write => Reply::json(403, forbidden_body()),
                    "PATCH" => patch_note(shared, key, &request.body),
                    _ => method_not_allowed("GET, PATCH"),
                },
                _ => Reply::json(404, error_body("Not found")),
            }
        }
        _ => Reply::json(404, error_body("Not found")),
    }
}

fn only(method: &str, allowed: &'static str, answer: impl FnOnce() -> Reply) -> Reply {
    if method == allowed {
        answer()
    } else {
        method_not_allowed(allowed)
    }
}

fn method_not_allowed(allow: &'static str) -> Reply {
    Reply {
        status: 405,
        body: error_body("Method not allowed"),
        allow: Some(allow),
    }
}

/// `Ok(can_write)` for an accepted token, else the 401 answer.
fn check_auth(shared: &Shared, request: &RecordedRequest) -> Result<bool, Reply> {
    let token = request
        .header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let unauthorized = |message: &str| {
        let body = Obj::new()
            .str("error", "Unauthorized")
            .str("message", message)
            .finish();
        Reply::json(401, body)
    };
    match token {
        None => Err(unauthorized("API key required")),
        Some(t) if t == shared.token => Ok(true),
        Some(t) if shared.lock().read_only_tokens.iter().any(|r| r == t) => Ok(false),
        Some(_) => Err(unauthorized("Invalid API key")),
    }
}

fn list_notes(shared: &Shared, query: &str) -> Reply {
    let params = parse_query(query);
    let first = |name: &str| {
        params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let tags: Vec<&str> = first("tag")
        .map(|t| t.split(',').filter(|t| !t.is_empty()).collect())
        .unwrap_or_default();
    let match_all = first("tag_match") == Some("all");
    let include_content = first("include_content") == Some("true");
    let limit = first("limit")
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(DEFAULT_LIMIT);
    let offset = first("offset")
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let path = first("path");

    let state = shared.lock();
    let has = |note: &StoredNote, tag: &str| note.tags.iter().any(|t| t == tag);
    let items: Vec<String> = state
        .notes
        .iter()
        .filter(|note| {
            tags.is_empty()
                || if match_all {
                    tags.iter().all(|t| has(note, t))
                } else {
                    tags.iter().any(|t| has(note, t))
                }
        })
        .filter(|note| path.is_none_or(|p| note.path.as_deref() == Some(p)))
        .skip(offset)
        .take(limit)
        .map(|note| {
            if include_content {
                note_json(note)
            } else {
                note_index_json(note)
            }
        })
        .collect();
    Reply::json(200, format!("[{}]", items.join(",")))
}

fn get_note(shared: &Shared, key: &str) -> Reply {
    let Some(key) = decode_path_segment(key) else {
        return Reply::json(500, error_body("Internal server error"));
    };
    let state = shared.lock();
    match state.find(&key).and_then(|i| state.notes.get(i)) {
        Some(note) => Reply::json(200, note_json(note)),
        None => Reply::json(404, error_body("Not found")),
    }
}

/// `PATCH /notes/{key}`, as vault-api.md describes the server's (0.3.6).
fn patch_note(shared: &Shared, key: &str, body: &[u8]) -> Reply {
    let internal = || Reply::json(500, error_body("Internal server error"));
    let Some(key) = decode_path_segment(key) else {
        return internal();
    };
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) else {
        return internal();
    };
    let typed_error = |status: u16, kind: &str, message: &str| {
        let body = Obj::new()
            .str("error_type", kind)
            .str("error", kind)
            .str("message", message)
            .finish();
        Reply::json(status, body)
    };
    let text = |name: &str| match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(()),
    };
    let (Ok(content), Ok(append), Ok(prepend), Ok(new_path), Ok(if_updated_at)) = (
        text("content"),
        text("append"),
        text("prepend"),
        text("path"),
        text("if_updated_at"),
    ) else {
        return internal();
    };
    let edit = match fields.get("content_edit") {
        None | Some(Value::Null) => None,
        Some(Value::Object(e)) => match (e.get("old_text"), e.get("new_text")) {
            (Some(Value::String(old)), Some(Value::String(new))) => {
                Some((old.clone(), new.clone()))
            }
            _ => return internal(),
        },
        Some(_) => return internal(),
    };
    let metadata = match fields.get("metadata") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(m.clone()),
        Some(_) => return internal(),
    };
    let tag_list = |name: &str| -> Result<Vec<String>, ()> {
        match fields.get("tags").and_then(|t| t.get(name)) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| i.as_str().map(String::from).ok_or(()))
                .collect(),
            Some(_) => Err(()),
        }
    };
    let (Ok(add_tags), Ok(remove_tags)) = (tag_list("add"), tag_list("remove")) else {
        return internal();
    };
    let force = fields.get("force") == Some(&Value::Bool(true));
    let modes = [
        content.is_some(),
        append.is_some(),
        prepend.is_some(),
        edit.is_some(),
    ]
    .iter()
    .filter(|m| **m)
    .count();
    if modes > 1 {
        return typed_error(
            400,
            "mutually_exclusive",
            "mutually_exclusive: give at most one of content, append, prepend, content_edit",
        );
    }
    let pure_append = (append.is_some() || prepend.is_some())
        && metadata.is_none()
        && new_path.is_none()
        && add_tags.is_empty()
        && remove_tags.is_empty();
    let mut state = shared.lock();
    let Some(index) = state.find(&key) else {
        return Reply::json(404, error_body("Not found"));
    };
    let current = state.notes[index].clone();
    match &if_updated_at {
        Some(theirs) if *theirs != current.updated_at => {
            let body = Obj::new()
                .str("error_type", "conflict")
                .str("error", "conflict")
                .str("current_updated_at", &current.updated_at)
                .str("your_updated_at", theirs)
                .str("expected_updated_at", &current.updated_at)
                .str("note_id", &current.id)
                .value(
                    "path",
                    &current.path.clone().map_or(Value::Null, Value::String),
                )
                .str(
                    "message",
                    "conflict: the note was updated since the updatedAt you gave; read it again",
                )
                .finish();
            return Reply::json(409, body);
        }
        Some(_) => {}
        None if pure_append || force => {}
        None => {
            return typed_error(
                428,
                "precondition_required",
                "precondition_required: send if_updated_at (the updatedAt you last read), or force: true",
            );
        }
    }
    let mut note = current.clone();
    if let Some(m) = metadata {
        let mut merged = match note.metadata.take() {
            Some(Value::Object(old)) => old,
            _ => serde_json::Map::new(),
        };
        merged.extend(m);
        note.metadata = (!merged.is_empty()).then_some(Value::Object(merged));
    }
    if let Some(c) = content {
        note.content = c;
    }
    if let Some(a) = append {
        note.content.push_str(&a);
    }
    if let Some(p) = prepend {
        note.content.insert_str(0, &p);
    }
    if let Some((old, new)) = edit {
        if !note.content.contains(&old) {
            return typed_error(
                400,
                "edit_not_found",
                "edit_not_found: old_text is not in the note",
            );
        }
        note.content = note.content.replacen(&old, &new, 1);
    }
    note.tags.extend(add_tags);
    note.tags.retain(|t| !remove_tags.contains(t));
    note.tags.sort();
    note.tags.dedup();
    if let Some(p) = new_path {
        let Some(p) = normalize_path(&p) else {
            return internal();
        };
        if state.by_path.get(&p).is_some_and(|&i| i != index) {
            let body = Obj::new()
                .str("error_type", "path_conflict")
                .str("error", "path_conflict")
                .str("path", &p)
                .str(
                    "message",
                    &format!("path_conflict: another note already uses path \"{p}\""),
                )
                .finish();
            return Reply::json(409, body);
        }
        if let Some(old) = &note.path {
            state.by_path.remove(old);
        }
        state.by_path.insert(p.clone(), index);
        note.path = Some(p);
    }
    // The version always moves, even within one millisecond.
    let mut stamp = state.next_stamp().created_at;
    while stamp <= current.updated_at {
        stamp = state.next_stamp().created_at;
    }
    note.updated_at = stamp;
    state.notes[index] = note.clone();
    drop(state);
    shared.changed.notify_all();
    Reply::json(200, note_json(&note))
}

fn create_note(shared: &Shared, body: &[u8]) -> Reply {
    let internal = || Reply::json(500, error_body("Internal server error"));
    let Some(new) = parse_new_note(body) else {
        return internal();
    };
    let result = shared.lock().create(new);
    match result {
        Ok(note) => {
            shared.changed.notify_all();
            Reply::json(201, note_json(&note))
        }
        Err(CreateError::PathConflict(path)) => {
            let body = Obj::new()
                .str("error_type", "path_conflict")
                .str("error", "path_conflict")
                .str("path", &path)
                .str(
                    "message",
                    &format!("path_conflict: another note already uses path \"{path}\""),
                )
                .finish();
            Reply::json(409, body)
        }
        Err(CreateError::Empty) => {
            let body = Obj::new()
                .str("error_type", "empty_note")
                .str("error", "empty_note")
                .str("message", "empty_note: a note needs content or a path")
                .finish();
            Reply::json(400, body)
        }
        Err(CreateError::IdConflict(_)) => internal(),
    }
}

/// The body of `POST /notes`, or `None` when it is not a JSON object with
/// fields of the right types.
fn parse_new_note(body: &[u8]) -> Option<NewNote> {
    let Value::Object(mut fields) = serde_json::from_slice::<Value>(body).ok()? else {
        return None;
    };
    let mut string_field = |name: &str| match fields.remove(name) {
        None | Some(Value::Null) => Some(None),
        Some(Value::String(s)) => Some(Some(s)),
        Some(_) => None,
    };
    let id = string_field("id")?;
    let path = string_field("path")?;
    let content = string_field("content")?.unwrap_or_default();
    let tags = match fields.remove("tags") {
        None | Some(Value::Null) => Vec::new(),
        // As in the vault: a string is taken as a list of its characters.
        Some(Value::String(s)) => s.chars().map(String::from).collect(),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                Value::String(s) => Some(s),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?,
        Some(_) => return None,
    };
    let metadata = fields.remove("metadata");
    Some(NewNote {
        id,
        path,
        content,
        tags,
        metadata,
    })
}

// ---------------------------------------------------------------------------
// JSON bodies (written by hand to keep the vault's key order)

/// A JSON object written field by field, in order.
struct Obj(String);

impl Obj {
    fn new() -> Obj {
        Obj(String::from("{"))
    }

    fn value(mut self, key: &str, value: &Value) -> Obj {
        if self.0.len() > 1 {
            self.0.push(',');
        }
        self.0.push_str(&Value::from(key).to_string());
        self.0.push(':');
        self.0.push_str(&value.to_string());
        self
    }

    fn str(self, key: &str, value: &str) -> Obj {
        self.value(key, &Value::from(value))
    }

    fn finish(mut self) -> String {
        self.0.push('}');
        self.0
    }
}

fn tags_value(note: &StoredNote) -> Value {
    Value::from(note.tags.clone())
}

/// A full `Note`.
fn note_json(note: &StoredNote) -> String {
    let mut obj = Obj::new().str("id", &note.id).str("content", &note.content);
    if let Some(path) = &note.path {
        obj = obj.str("path", path);
    }
    if let Some(metadata) = &note.metadata {
        obj = obj.value("metadata", metadata);
    }
    obj.str("createdAt", &note.created_at)
        .str("updatedAt", &note.updated_at)
        .value("tags", &tags_value(note))
        .finish()
}

/// A `NoteIndex` (no content).
fn note_index_json(note: &StoredNote) -> String {
    let mut obj = Obj::new().str("id", &note.id);
    if let Some(path) = &note.path {
        obj = obj.str("path", path);
    }
    obj = obj
        .str("createdAt", &note.created_at)
        .str("updatedAt", &note.updated_at)
        .value("tags", &tags_value(note));
    if let Some(metadata) = &note.metadata {
        obj = obj.value("metadata", metadata);
    }
    let preview: String = note.content.chars().take(PREVIEW_CHARS).collect();
    obj.value("byteSize", &Value::from(note.content.len()))
        .str("preview", &preview)
        .finish()
}

fn error_body(message: &str) -> String {
    Obj::new().str("error", message).finish()
}

fn health_body() -> String {
    Obj::new().str("status", "ok").finish()
}

fn forbidden_body() -> String {
    Obj::new()
        .str("error", "Forbidden")
        .str("error_type", "insufficient_scope")
        .str(
            "message",
            "This endpoint requires the 'vault:write' scope (or 'vault:default:write').",
        )
        .str("required_scope", "vault:write")
        .value("granted_scopes", &Value::from(vec!["vault:read"]))
        .finish()
}

fn fault_status_body(status: u16) -> String {
    match status {
        401 => Obj::new()
            .str("error", "Unauthorized")
            .str("message", "Invalid API key")
            .finish(),
        404 => error_body("Not found"),
        500 => error_body("Internal server error"),
        other => error_body(reason_phrase(other)),
    }
}

/// A body cut off in the middle, shaped like what the route would answer.
fn malformed_json(route: Option<Route>) -> String {
    match route {
        Some(Route::List) => r#"[{"id":"2026-11-23-21-54-39-462000","path":"jobs/tru"#.to_string(),
        _ => r#"{"id":"2026-11-23-21-54-39-462000","content":"---\nsched"#.to_string(),
    }
}

// ---------------------------------------------------------------------------
// Percent-decoding

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes a path segment like JavaScript's `decodeURIComponent`: `None` for
/// a `%` that is not followed by two hex digits, or bytes that are not UTF-8.
/// `+` stays `+`.
fn decode_path_segment(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = hex_value(*bytes.get(i + 1)?)?;
            let lo = hex_value(*bytes.get(i + 2)?)?;
            out.push(hi * 16 + lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Decodes a query name or value: `+` is a space, `%XX` a byte; a `%` that
/// is not a valid escape is kept as it is; invalid UTF-8 becomes U+FFFD.
fn decode_query_component(component: &str) -> String {
    let bytes = component.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let escape = bytes
                    .get(i + 1)
                    .and_then(|&h| hex_value(h))
                    .zip(bytes.get(i + 2).and_then(|&l| hex_value(l)));
                match escape {
                    Some((hi, lo)) => {
                        out.push(hi * 16 + lo);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `a=1&b=x+y` → `[("a","1"), ("b","x y")]`, in order, decoded.
fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode_query_component(name), decode_query_component(value))
        })
        .collect()
}
