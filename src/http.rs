//! A small HTTP/1.1 server on `std::net` for `serve`'s admin API (SPEC
//! §9.2), and the name resolver of the runner's HTTP clients.
//!
//! It replaces tiny_http 0.12, which cannot be made safe from outside: its
//! accept loop ends for good on the first `accept()` error (EMFILE under
//! descriptor pressure), its pool panics when the OS refuses a thread (a
//! task limit), and it has no read timeout and no head or body limit, so
//! the API died while the process looked alive. Here:
//!
//! - One accept thread and a thread per connection, up to a cap (at most
//!   [`MAX_CONNECTIONS`], and at most half of the descriptors the process
//!   may open beyond a reserve for runs). A connection over the cap, or one
//!   that cannot get a thread, gets a canned 503 from the accept thread
//!   and is closed: no thread, no wait.
//! - `accept()` errors never end the loop. On EMFILE/ENFILE a reserve
//!   descriptor is closed so the pending connection can be accepted and
//!   refused (else the backlog fills and clients hang), then reopened;
//!   other errors pause the loop briefly.
//! - HTTP/1.1 keep-alive while connections are plentiful (at most half
//!   the cap in use), for up to 1000 requests and 20 s between them; else
//!   `Connection: close` after the answer. The request line and headers
//!   must arrive within [`Limits::head_time`] of the accept (on a kept
//!   connection, of the idle wait's end): a slowloris sending a byte at a
//!   time is answered 408 and dropped. The body must arrive within
//!   [`Limits::body_time`], the answer be taken within
//!   [`Limits::write_time`].
//! - Request line + headers are kept up to [`MAX_HEAD`]; a larger head is
//!   read on (not kept, up to 1 MiB) so the request can still be answered,
//!   and the handler is told ([`Request::head_too_large`]). Bodies are
//!   `Content-Length` only: a `Transfer-Encoding` is 411 (400 beside a
//!   `Content-Length`); the handler reads the body with its own cap.
//! - Answers carry `Content-Type` and `Content-Length` (and `Connection:
//!   close` when the connection ends). A request whose bytes were not all
//!   read is drained briefly after the answer, so closing does not reset
//!   the connection under the client before it has read the answer.
//!
//! Long (about 1,000 lines) because it is a whole small server: the
//! request parser, every limit and deadline and the accept loop under
//! pressure are kept in one file, each limit's reason beside its code.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};

use serde_json::json;

/// Largest request line + headers kept.
pub const MAX_HEAD: usize = 16 << 10;
/// Most connections served at once, whatever the descriptor limit.
pub const MAX_CONNECTIONS: usize = 512;
/// Descriptors left to everything else (runs: lock files, pipes, state).
const RESERVED_FDS: u64 = 64;
/// How much of an oversized head, or of an unread body, is read and
/// thrown away before the connection is simply closed.
const MAX_DISCARD: usize = 1 << 20;
/// How long unread request bytes are drained after the answer.
const LINGER: Duration = Duration::from_secs(2);
/// Pause after an `accept()` error that closing the reserve cannot help.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);
/// How long a kept-alive connection may wait for its next request: longer
/// than clients keep idle connections (ureq: 15 s), so that they, not we,
/// close them and no request is sent on a connection just closed.
const KEEP_ALIVE_IDLE: Duration = Duration::from_secs(20);
/// Requests served on one connection before it is closed.
const MAX_REQUESTS_PER_CONNECTION: usize = 1000;

/// Deadlines and the connection cap.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_connections: usize,
    /// From the accept to the end of the headers.
    pub head_time: Duration,
    /// From the end of the headers to the end of the body.
    pub body_time: Duration,
    /// For writing the answer.
    pub write_time: Duration,
}

impl Limits {
    /// The limits for this process: the cap follows its descriptor limit.
    pub fn for_process() -> Limits {
        Limits {
            max_connections: connection_cap(open_files_limit()),
            head_time: Duration::from_secs(10),
            body_time: Duration::from_secs(30),
            write_time: Duration::from_secs(30),
        }
    }
}

/// The connection cap for a soft descriptor limit (`None`: unknown, taken
/// as 1024): half of what is left after [`RESERVED_FDS`], within 4 to
/// [`MAX_CONNECTIONS`].
pub fn connection_cap(nofile: Option<u64>) -> usize {
    let n = nofile.unwrap_or(1024);
    let by_fds = n.saturating_sub(RESERVED_FDS) / 2;
    usize::try_from(by_fds)
        .unwrap_or(usize::MAX)
        .clamp(4, MAX_CONNECTIONS)
}

/// The soft RLIMIT_NOFILE, from /proc (no system call needed).
fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line
        .get("Max open files".len()..)?
        .split_whitespace()
        .next()?;
    if soft == "unlimited" {
        Some(u64::MAX)
    } else {
        soft.parse().ok()
    }
}

/// An answer. `then` runs after it was sent and the connection closed.
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    headers: Vec<(&'static str, String)>,
    then: Option<Box<dyn FnOnce() + Send>>,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            content_type,
            body: body.into(),
            headers: Vec::new(),
            then: None,
        }
    }

    /// `{"error": code, "message": message}`.
    pub fn error(status: u16, code: &str, message: &str) -> Response {
        Response::new(
            status,
            "application/json",
            json!({ "error": code, "message": message }).to_string(),
        )
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    /// Work to do once the answer is out (on the connection's thread).
    pub fn then(mut self, work: impl FnOnce() + Send + 'static) -> Response {
        self.then = Some(Box::new(work));
        self
    }

    /// The status line and headers; `keep`: the connection stays open for
    /// another request.
    fn head(&self, content_length: usize, keep: bool) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {content_length}\r\n",
            self.status,
            reason(self.status),
            clean(self.content_type),
        );
        if !keep {
            head.push_str("Connection: close\r\n");
        }
        for (name, value) in &self.headers {
            head.push_str(&format!("{}: {}\r\n", clean(name), clean(value)));
        }
        head.push_str("\r\n");
        head.into_bytes()
    }
}

/// A header value without the bytes that would end it.
fn clean(value: &str) -> String {
    value
        .chars()
        .filter(|c| !matches!(c, '\r' | '\n'))
        .collect()
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Why a body could not be had.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyError {
    /// Its declared length is over the cap.
    TooLarge,
    /// It ended early, timed out or the connection failed.
    Read(String),
}

/// A request whose head was read; the body is read on demand.
pub struct Request<'a> {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    head_too_large: bool,
    body: Body<'a>,
}

impl Request<'_> {
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The request target as sent (path and query).
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The first header of that name (names are case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The request line and headers were over [`MAX_HEAD`]: no header was
    /// kept, and the body (if any) cannot be read.
    pub fn head_too_large(&self) -> bool {
        self.head_too_large
    }

    /// The body, if its declared length is at most `cap`.
    pub fn read_body(&mut self, cap: usize) -> Result<Vec<u8>, BodyError> {
        self.body.read_all(cap)
    }
}

struct Body<'a> {
    stream: &'a TcpStream,
    /// Bytes read with the head beyond its end.
    buffered: Vec<u8>,
    /// The declared length (0 without a Content-Length).
    length: u64,
    /// Whether all `length` bytes were consumed.
    done: bool,
    deadline: Instant,
    /// `Expect: 100-continue`: say so before reading.
    expect_continue: bool,
}

impl Body<'_> {
    fn read_all(&mut self, cap: usize) -> Result<Vec<u8>, BodyError> {
        if self.done {
            return Ok(Vec::new());
        }
        if self.length > cap as u64 {
            return Err(BodyError::TooLarge);
        }
        // At most `cap` (checked above), so the cast holds.
        let want = self.length as usize;
        let from_buffer = want.min(self.buffered.len());
        let mut body: Vec<u8> = self.buffered.drain(..from_buffer).collect();
        if body.len() < want && self.expect_continue {
            self.expect_continue = false;
            let mut stream = self.stream;
            write_by(&mut stream, b"HTTP/1.1 100 Continue\r\n\r\n", self.deadline)
                .map_err(|e| BodyError::Read(e.to_string()))?;
        }
        let mut chunk = [0u8; 8192];
        while body.len() < want {
            let n = read_by(
                self.stream,
                &mut chunk[..(want - body.len()).min(8192)],
                self.deadline,
            )
            .map_err(|e| BodyError::Read(e.to_string()))?;
            if n == 0 {
                return Err(BodyError::Read(
                    "the body ended before its Content-Length".to_string(),
                ));
            }
            body.extend_from_slice(&chunk[..n]);
        }
        self.done = true;
        Ok(body)
    }

    /// Whether every byte the client sent so far was read: then closing
    /// cannot reset the connection.
    fn consumed(&self) -> bool {
        (self.done || self.length == 0) && self.buffered.is_empty()
    }
}

/// One `read` before `deadline` (a timed-out read is `TimedOut`).
fn read_by(mut stream: &TcpStream, buf: &mut [u8], deadline: Instant) -> io::Result<usize> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
            }
            other => return other,
        }
    }
}

/// Writes all of `bytes` before `deadline`.
fn write_by(stream: &mut &TcpStream, mut bytes: &[u8], deadline: Instant) -> io::Result<()> {
    while !bytes.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
        }
        stream.set_write_timeout(Some(left))?;
        match stream.write(bytes) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "closed")),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// What answers requests.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, request: &mut Request<'_>) -> Response;
}

impl<F> Handler for F
where
    F: Fn(&mut Request<'_>) -> Response + Send + Sync + 'static,
{
    fn handle(&self, request: &mut Request<'_>) -> Response {
        self(request)
    }
}

struct Shared {
    stopping: AtomicBool,
    live: AtomicUsize,
}

/// A bound listener, not yet accepting.
pub struct Server {
    listener: TcpListener,
    local: SocketAddr,
    limits: Limits,
    shared: Arc<Shared>,
}

/// Stops a running [`Server`] from another thread.
#[derive(Clone)]
pub struct Stopper {
    shared: Arc<Shared>,
    wake: SocketAddr,
}

impl Stopper {
    /// No new connection is served after this; the accept loop returns
    /// (it is woken by a connection of our own).
    pub fn stop(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.wake, Duration::from_secs(1));
    }
}

impl Server {
    pub fn bind(host: &str, port: u16, limits: Limits) -> io::Result<Server> {
        let listener = TcpListener::bind((host, port))?;
        let local = listener.local_addr()?;
        Ok(Server {
            listener,
            local,
            limits,
            shared: Arc::new(Shared {
                stopping: AtomicBool::new(false),
                live: AtomicUsize::new(0),
            }),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn stopper(&self) -> Stopper {
        let ip = match self.local.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        Stopper {
            shared: Arc::clone(&self.shared),
            wake: SocketAddr::new(ip, self.local.port()),
        }
    }

    /// The accept loop: returns only once stopped.
    pub fn run(self, handler: Arc<dyn Handler>) {
        let mut reserve = open_reserve();
        let mut refusals = Refusals::default();
        loop {
            if self.stopping() {
                return;
            }
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) => {
                    if self.stopping() {
                        return;
                    }
                    match e.raw_os_error() {
                        Some(libc::EMFILE | libc::ENFILE) => {
                            refusals.refused("out of file descriptors", &e);
                            // Free one descriptor to take the pending
                            // connection off the backlog and refuse it.
                            if reserve.take().is_some() {
                                if let Ok((stream, _)) = self.listener.accept() {
                                    refuse(stream, "out of file descriptors");
                                }
                            } else {
                                std::thread::sleep(ACCEPT_PAUSE);
                            }
                            reserve = open_reserve();
                        }
                        Some(libc::ECONNABORTED | libc::EINTR | libc::EPROTO) => {}
                        _ => {
                            refusals.refused("cannot accept connections", &e);
                            std::thread::sleep(ACCEPT_PAUSE);
                        }
                    }
                    continue;
                }
            };
            if self.stopping() {
                return;
            }
            if reserve.is_none() {
                reserve = open_reserve();
            }
            if self.shared.live.load(Ordering::SeqCst) >= self.limits.max_connections {
                refusals.refused(
                    "too many connections",
                    &format_args!("{} open", self.limits.max_connections),
                );
                refuse(stream, "too many connections");
                continue;
            }
            if let Err((stream, e)) = self.spawn(stream, &handler) {
                refusals.refused("cannot start a connection thread", &e);
                if let Some(stream) = stream {
                    refuse(stream, "cannot start a thread");
                }
                continue;
            }
            refusals.accepted();
        }
    }

    fn stopping(&self) -> bool {
        self.shared.stopping.load(Ordering::SeqCst)
    }

    /// Serves `stream` on a thread of its own. On failure the stream comes
    /// back, to be refused.
    #[allow(clippy::type_complexity)]
    fn spawn(
        &self,
        stream: TcpStream,
        handler: &Arc<dyn Handler>,
    ) -> Result<(), (Option<TcpStream>, io::Error)> {
        let slot = Arc::new(Mutex::new(Some(stream)));
        let live = LiveGuard::new(&self.shared);
        let (slot2, handler, limits) =
            (Arc::clone(&slot), Arc::clone(handler), self.limits.clone());
        let spawned = std::thread::Builder::new()
            .name("http".into())
            .spawn(move || {
                let stream = slot2.lock().unwrap_or_else(PoisonError::into_inner).take();
                let then = stream.and_then(|s| serve_connection(s, &*handler, &limits, &live.0));
                drop(live);
                if let Some(work) = then {
                    work();
                }
            });
        match spawned {
            Ok(_) => Ok(()),
            Err(e) => Err((
                slot.lock().unwrap_or_else(PoisonError::into_inner).take(),
                e,
            )),
        }
    }
}

/// Counts a connection as live until dropped (also when its thread
/// panics, or was never started).
struct LiveGuard(Arc<Shared>);

impl LiveGuard {
    fn new(shared: &Arc<Shared>) -> LiveGuard {
        shared.live.fetch_add(1, Ordering::SeqCst);
        LiveGuard(Arc::clone(shared))
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::SeqCst);
    }
}

fn open_reserve() -> Option<File> {
    File::open("/dev/null").ok()
}

/// Logs the start and the end of a stretch of refused connections, not
/// each one.
#[derive(Default)]
struct Refusals {
    reason: Option<&'static str>,
    count: u64,
}

impl Refusals {
    fn refused(&mut self, reason: &'static str, detail: &dyn std::fmt::Display) {
        if self.reason != Some(reason) {
            self.report_end();
            log::warn!(
                "admin API: {reason} ({detail}): refusing new connections with 503 until it passes"
            );
            self.reason = Some(reason);
        }
        self.count += 1;
    }

    fn accepted(&mut self) {
        self.report_end();
    }

    fn report_end(&mut self) {
        if let Some(reason) = self.reason.take() {
            log::info!(
                "admin API: accepting connections again ({} refused: {reason})",
                self.count
            );
        }
        self.count = 0;
    }
}

/// Answers 503 at once, from the accept thread, without blocking: what
/// the client already sent is read first so that closing does not reset
/// the connection before it sees the answer.
fn refuse(mut stream: TcpStream, why: &str) {
    let _ = stream.set_nonblocking(true);
    let mut sink = [0u8; 4096];
    for _ in 0..4 {
        match stream.read(&mut sink) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
    let response = Response::error(
        503,
        "busy",
        &format!("the admin API is refusing connections ({why}); try again shortly"),
    )
    .with_header("Retry-After", "1");
    let mut bytes = response.head(response.body.len(), false);
    bytes.extend_from_slice(&response.body);
    let _ = stream.write_all(&bytes);
    let _ = stream.shutdown(Shutdown::Write);
}

/// Why no request could be read.
#[derive(Debug, PartialEq, Eq)]
enum HeadError {
    /// Closed before a request (or reset).
    Closed,
    TimedOut,
    /// Over [`MAX_DISCARD`], or a request line over [`MAX_HEAD`].
    TooLarge,
    Malformed(&'static str),
    Version,
}

/// A parsed request head.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    method: String,
    target: String,
    http10: bool,
    headers: Vec<(String, String)>,
    too_large: bool,
    /// Bytes after the head.
    rest: Vec<u8>,
}

/// Reads a head: request line and headers, up to the empty line. `buf`
/// holds bytes already read (a kept-alive connection's next request);
/// with `idle_until`, a connection on which nothing arrives by then is
/// closed quietly (an idle keep-alive).
fn read_head(
    stream: &TcpStream,
    mut buf: Vec<u8>,
    idle_until: Option<Instant>,
    deadline: Instant,
) -> Result<Head, HeadError> {
    let mut chunk = [0u8; 4096];
    // Past MAX_HEAD: the kept head, and the last bytes seen (an end of
    // head may straddle two reads).
    let mut kept: Option<Vec<u8>> = None;
    let mut discarded = 0usize;
    let mut from = 0;
    loop {
        if kept.is_none() {
            // Empty lines before the request line are skipped (RFC 9112).
            let blank = buf
                .iter()
                .take_while(|b| matches!(b, b'\r' | b'\n'))
                .count();
            if blank > 0 {
                buf.drain(..blank);
                from = 0;
            }
        }
        if let Some(end) = find_end(&buf, from) {
            let rest = buf.split_off(end);
            return match kept {
                None if end <= MAX_HEAD => parse_head(&buf, rest),
                None => parse_truncated(&buf[..MAX_HEAD]),
                Some(head) => parse_truncated(&head),
            };
        }
        if kept.is_none() && buf.len() > MAX_HEAD {
            let mut head = std::mem::take(&mut buf);
            buf = head.split_off(head.len() - 3);
            head.truncate(MAX_HEAD);
            kept = Some(head);
        } else if kept.is_some() {
            let keep = buf.len().saturating_sub(3);
            buf.drain(..keep);
        }
        from = buf.len().saturating_sub(3);
        let idle = kept.is_none() && buf.is_empty() && idle_until.is_some();
        let limit = match idle_until {
            Some(t) if idle => t.min(deadline),
            _ => deadline,
        };
        let n = match read_by(stream, &mut chunk, limit) {
            Ok(0) => return Err(HeadError::Closed),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::TimedOut && idle => {
                return Err(HeadError::Closed);
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut => return Err(HeadError::TimedOut),
            Err(_) => return Err(HeadError::Closed),
        };
        if kept.is_some() {
            discarded += n;
            if discarded > MAX_DISCARD {
                return Err(HeadError::TooLarge);
            }
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Where the head ends (just after its empty line), searching from `from`.
fn find_end(buf: &[u8], from: usize) -> Option<usize> {
    let window = buf.get(from..)?;
    let crlf = window
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4);
    let lf = window.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(from + a.min(b)),
        (a, b) => a.or(b).map(|i| from + i),
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The request line: method, target, whether HTTP/1.0.
fn parse_request_line(line: &[u8]) -> Result<(String, String, bool), HeadError> {
    let line =
        std::str::from_utf8(line).map_err(|_| HeadError::Malformed("request line is not UTF-8"))?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::Malformed("malformed request line"));
    };
    if !is_token(method) || target.is_empty() || target.bytes().any(|b| b.is_ascii_control()) {
        return Err(HeadError::Malformed("malformed request line"));
    }
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        v if v.len() == 8
            && v.starts_with("HTTP/")
            && v.as_bytes()[5].is_ascii_digit()
            && v.as_bytes()[6] == b'.'
            && v.as_bytes()[7].is_ascii_digit() =>
        {
            return Err(HeadError::Version);
        }
        _ => return Err(HeadError::Malformed("malformed request line")),
    };
    Ok((method.to_string(), target.to_string(), http10))
}

fn lines(head: &[u8]) -> impl Iterator<Item = &[u8]> {
    head.split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
}

fn parse_head(head: &[u8], rest: Vec<u8>) -> Result<Head, HeadError> {
    let mut lines = lines(head);
    let (method, target, http10) = parse_request_line(lines.next().unwrap_or_default())?;
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            break;
        }
        if matches!(line.first(), Some(b' ' | b'\t')) {
            return Err(HeadError::Malformed("folded header lines are not accepted"));
        }
        let colon = line
            .iter()
            .position(|b| *b == b':')
            .ok_or(HeadError::Malformed("malformed header line"))?;
        let name = std::str::from_utf8(&line[..colon])
            .ok()
            .filter(|n| is_token(n))
            .ok_or(HeadError::Malformed("malformed header name"))?;
        let value = String::from_utf8_lossy(&line[colon + 1..])
            .trim_matches(|c| c == ' ' || c == '\t')
            .to_string();
        headers.push((name.to_string(), value));
    }
    Ok(Head {
        method,
        target,
        http10,
        headers,
        too_large: false,
        rest,
    })
}

/// An oversized head: only its request line counts.
fn parse_truncated(kept: &[u8]) -> Result<Head, HeadError> {
    let Some(end) = kept.iter().position(|b| *b == b'\n') else {
        return Err(HeadError::TooLarge);
    };
    let line = kept[..end].strip_suffix(b"\r").unwrap_or(&kept[..end]);
    let (method, target, http10) = parse_request_line(line)?;
    Ok(Head {
        method,
        target,
        http10,
        headers: Vec::new(),
        too_large: true,
        rest: Vec::new(),
    })
}

/// The declared body length: `Content-Length` (several must agree; too
/// large to count is `u64::MAX`), 0 without one. A `Transfer-Encoding`
/// (chunked bodies) is refused.
fn body_length(headers: &[(String, String)]) -> Result<u64, Response> {
    let chunked = headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding"));
    let mut length: Option<u64> = None;
    for (_, value) in headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
    {
        for part in value.split(',').map(str::trim) {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Response::error(
                    400,
                    "bad_request",
                    "malformed Content-Length",
                ));
            }
            let n = part.parse::<u64>().unwrap_or(u64::MAX);
            if length.is_some_and(|l| l != n) {
                return Err(Response::error(
                    400,
                    "bad_request",
                    "conflicting Content-Length headers",
                ));
            }
            length = Some(n);
        }
    }
    match (chunked, length) {
        (true, Some(_)) => Err(Response::error(
            400,
            "bad_request",
            "a request may not have both Transfer-Encoding and Content-Length",
        )),
        (true, None) => Err(Response::error(
            411,
            "length_required",
            "chunked request bodies are not accepted: send a Content-Length",
        )),
        (false, n) => Ok(n.unwrap_or(0)),
    }
}

/// One connection: requests answered one after the other until the
/// client or a limit closes it. Returns the last answer's follow-up work
/// (an answer with work to do closes the connection).
fn serve_connection(
    stream: TcpStream,
    handler: &dyn Handler,
    limits: &Limits,
    shared: &Shared,
) -> Option<Box<dyn FnOnce() + Send>> {
    let _ = stream.set_nodelay(true);
    let mut carried = Vec::new();
    let mut idle_until = None;
    let mut deadline = Instant::now() + limits.head_time;
    for served in 1.. {
        let head = match read_head(&stream, carried, idle_until, deadline) {
            Ok(head) => head,
            Err(HeadError::Closed) => return None,
            Err(e) => {
                let response = match e {
                    HeadError::TimedOut => Response::error(
                        408,
                        "request_timeout",
                        "the request did not arrive in time",
                    ),
                    HeadError::TooLarge => Response::error(
                        431,
                        "header_too_large",
                        "the request line and headers are limited to 16 KiB",
                    ),
                    HeadError::Version => Response::error(
                        505,
                        "http_version_not_supported",
                        "only HTTP/1.0 and HTTP/1.1 are served",
                    ),
                    HeadError::Malformed(m) => Response::error(400, "bad_request", m),
                    HeadError::Closed => return None,
                };
                answer(&stream, &response, false, false, false, limits);
                return None;
            }
        };
        let length = match body_length(&head.headers) {
            Ok(n) => n,
            Err(response) => {
                answer(
                    &stream,
                    &response,
                    head.method == "HEAD",
                    false,
                    false,
                    limits,
                );
                return None;
            }
        };
        let expect_continue = !head.http10
            && head.headers.iter().any(|(n, v)| {
                n.eq_ignore_ascii_case("expect") && v.eq_ignore_ascii_case("100-continue")
            });
        let head_only = head.method == "HEAD";
        // Another request may follow on HTTP/1.1, unless the client says
        // close, or connections are scarce (half the cap in use), or
        // serve is stopping.
        let may_keep = !head.http10
            && !head.too_large
            && served < MAX_REQUESTS_PER_CONNECTION
            && !head.headers.iter().any(|(n, v)| {
                n.eq_ignore_ascii_case("connection")
                    && v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close"))
            })
            && shared.live.load(Ordering::SeqCst) <= limits.max_connections / 2
            && !shared.stopping.load(Ordering::SeqCst);
        let mut request = Request {
            method: head.method,
            target: head.target,
            headers: head.headers,
            head_too_large: head.too_large,
            body: Body {
                stream: &stream,
                buffered: head.rest,
                length,
                done: false,
                deadline: Instant::now() + limits.body_time,
                expect_continue,
            },
        };
        let mut response = handler.handle(&mut request);
        // An oversized head's body (if any) was never delimited.
        let consumed = !request.head_too_large && request.body.consumed();
        let body_read = request.body.done || request.body.length == 0;
        let keep = may_keep && body_read && response.then.is_none();
        let written = answer(&stream, &response, head_only, consumed, keep, limits);
        if !keep || !written {
            return response.then.take();
        }
        carried = std::mem::take(&mut request.body.buffered);
        let now = Instant::now();
        idle_until = Some(now + KEEP_ALIVE_IDLE);
        deadline = now + KEEP_ALIVE_IDLE + limits.head_time;
    }
    None
}

/// Writes the answer; unless `keep`, closes the connection, draining
/// unread request bytes first (briefly) so the close does not reset it.
/// Whether the answer was written.
fn answer(
    stream: &TcpStream,
    response: &Response,
    head_only: bool,
    consumed: bool,
    keep: bool,
    limits: &Limits,
) -> bool {
    let mut bytes = response.head(response.body.len(), keep);
    if !head_only {
        bytes.extend_from_slice(&response.body);
    }
    let mut writer = stream;
    let written = write_by(&mut writer, &bytes, Instant::now() + limits.write_time).is_ok();
    if keep && written {
        return true;
    }
    let _ = stream.shutdown(Shutdown::Write);
    if written && !consumed {
        let deadline = Instant::now() + LINGER;
        let mut sink = [0u8; 8192];
        let mut drained = 0usize;
        while drained < MAX_DISCARD {
            match read_by(stream, &mut sink, deadline) {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    }
    written
}

/// A ureq agent whose name lookups never panic. ureq's own resolver runs
/// each lookup that has a timeout on a `std::thread::spawn` thread, which
/// panics when the OS refuses a thread (a task limit), taking the
/// scheduler or a request with it. Here an IP literal needs no lookup at
/// all; a name is looked up on a thread of ours when one can be had
/// (bounded by the timeout), else on the caller's.
pub fn client(config: ureq::config::Config) -> ureq::Agent {
    ureq::Agent::with_parts(
        config,
        ureq::unversioned::transport::DefaultConnector::new(),
        Resolver,
    )
}

#[derive(Debug)]
struct Resolver;

impl ureq::unversioned::resolver::Resolver for Resolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        use ureq::unversioned::resolver::DefaultResolver;
        use ureq::unversioned::transport::time::Duration as UreqDuration;
        let mut now = timeout;
        now.after = UreqDuration::NotHappening;
        let literal = uri.host().is_some_and(|h| {
            h.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .is_ok()
        });
        if literal || timeout.after.is_not_happening() {
            // Without a deadline ureq's resolver looks up on this thread.
            return DefaultResolver::default().resolve(uri, config, now);
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let (uri2, config2) = (uri.clone(), config.clone());
        let spawned = std::thread::Builder::new()
            .name("resolve".into())
            .spawn(move || {
                let _ = tx.send(DefaultResolver::default().resolve(&uri2, &config2, now));
            });
        if spawned.is_err() {
            return DefaultResolver::default().resolve(uri, config, now);
        }
        match rx.recv_timeout(*timeout.after) {
            Ok(result) => result,
            Err(mpsc::RecvTimeoutError::Timeout) => Err(ureq::Error::Timeout(timeout.reason)),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(ureq::Error::HostNotFound),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Head, HeadError> {
        let bytes = text.as_bytes();
        match find_end(bytes, 0) {
            Some(end) => parse_head(&bytes[..end], bytes[end..].to_vec()),
            None => Err(HeadError::Closed),
        }
    }

    #[test]
    fn parses_a_request_head() {
        let h = head("PUT /a?b=1 HTTP/1.1\r\nHost: x\r\ncontent-length: 2\r\nX-E:  ü \r\n\r\n{}")
            .unwrap();
        assert_eq!(
            (h.method.as_str(), h.target.as_str(), h.http10),
            ("PUT", "/a?b=1", false)
        );
        assert_eq!(h.headers.len(), 3);
        assert_eq!(h.headers[2], ("X-E".to_string(), "ü".to_string()));
        assert_eq!(h.rest, b"{}");
        assert_eq!(body_length(&h.headers).ok(), Some(2));
        let h = head("GET / HTTP/1.0\n\n").unwrap();
        assert!(h.http10);
    }

    #[test]
    fn refuses_malformed_heads() {
        for bad in [
            "GARBAGE\r\n\r\n",
            "GET /\r\n\r\n",
            "GET  / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1 x\r\n\r\n",
            "G(T / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nNo colon\r\n\r\n",
            "GET / HTTP/1.1\r\nA b: c\r\n\r\n",
            "GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n",
            "GET / HTTX/1.1\r\n\r\n",
        ] {
            assert!(matches!(head(bad), Err(HeadError::Malformed(_))), "{bad:?}");
        }
        assert_eq!(head("GET / HTTP/9.9\r\n\r\n"), Err(HeadError::Version));
        assert_eq!(head("GET / HTTP/2.0\r\n\r\n"), Err(HeadError::Version));
    }

    #[test]
    fn body_framing() {
        let h = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        assert_eq!(body_length(&h(&[])).ok(), Some(0));
        assert_eq!(
            body_length(&h(&[("Content-Length", "99999999999999999999999")])).ok(),
            Some(u64::MAX)
        );
        assert_eq!(
            body_length(&h(&[("Content-Length", "5"), ("content-length", "5")])).ok(),
            Some(5)
        );
        for bad in [
            vec![("Content-Length", "5"), ("Content-Length", "6")],
            vec![("Content-Length", "-1")],
            vec![("Content-Length", "")],
            vec![("Content-Length", "5, 6")],
            vec![("Transfer-Encoding", "chunked"), ("Content-Length", "5")],
        ] {
            assert_eq!(
                body_length(&h(&bad)).err().map(|r| r.status),
                Some(400),
                "{bad:?}"
            );
        }
        assert_eq!(
            body_length(&h(&[("Transfer-Encoding", "chunked")]))
                .err()
                .map(|r| r.status),
            Some(411)
        );
    }

    #[test]
    fn head_ends() {
        assert_eq!(find_end(b"a\r\n\r\nb", 0), Some(5));
        assert_eq!(find_end(b"a\n\nb", 0), Some(3));
        assert_eq!(find_end(b"a\r\nb\r\n", 0), None);
        assert_eq!(find_end(b"xx", 5), None);
    }

    #[test]
    fn caps_follow_the_descriptor_limit() {
        assert_eq!(connection_cap(Some(256)), 96);
        assert_eq!(connection_cap(Some(1024)), 480);
        assert_eq!(connection_cap(Some(1 << 20)), MAX_CONNECTIONS);
        assert_eq!(connection_cap(Some(10)), 4);
        assert_eq!(connection_cap(Some(u64::MAX)), MAX_CONNECTIONS);
        assert_eq!(connection_cap(None), 480);
    }

    #[test]
    fn answers_carry_type_and_length() {
        let r = Response::new(200, "application/json", "{}").with_header("Allow", "GET\r\nX: y");
        let head = String::from_utf8(r.head(2, false)).unwrap();
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\nAllow: GETX: y\r\n\r\n"
        );
    }
}
