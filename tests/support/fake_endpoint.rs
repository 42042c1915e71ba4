//! A fake HTTP endpoint for pings and webhooks (SPEC §11): a real
//! HTTP/1.1 server on `127.0.0.1:0` (std `TcpListener`, a thread per
//! connection) that records every request — method, target, headers,
//! body — and answers each path as the test says: 200 (the default), some
//! other status, or not at all ([`Answer::Hang`]: the request is read and
//! recorded, and the connection is held without an answer until the
//! endpoint is dropped). Tests await "N requests received" on a condvar
//! with a generous deadline; nothing sleeps and then looks.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long the awaiting helpers wait before they fail the test.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The largest body read (a ping's is at most 10 KiB, a webhook's ~64 KiB).
const MAX_BODY: usize = 8 << 20;

/// How a path is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// This status, with a short body.
    Status(u16),
    /// Read and record the request, then hold the connection without
    /// answering until the endpoint is dropped.
    Hang,
}

/// One request as it arrived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The request target as sent (path and query).
    pub path: String,
    /// Header names and values as sent, in order.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked if it was chunked.
    pub body: Vec<u8>,
}

impl Request {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn body_json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body_text()))
    }

    /// `METHOD /path`, for messages.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    /// Every byte of the request as text (request line, headers, body),
    /// to look for what must not be there.
    pub fn everything(&self) -> String {
        let mut s = format!("{} {}\n", self.method, self.path);
        for (k, v) in &self.headers {
            s.push_str(&format!("{k}: {v}\n"));
        }
        s.push('\n');
        s.push_str(&self.body_text());
        s
    }
}

#[derive(Default)]
struct State {
    requests: Vec<Request>,
    answers: HashMap<String, Answer>,
    /// Requests answered so far (a hanging one never is).
    answered: usize,
    stopped: bool,
    /// Clones of the open connections, shut down at drop.
    connections: HashMap<u64, TcpStream>,
}

struct Shared {
    state: Mutex<State>,
    /// Notified when a request is recorded and when the endpoint stops.
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The endpoint. Dropping it stops the server, ends every hang and closes
/// every connection.
pub struct FakeEndpoint {
    shared: Arc<Shared>,
    addr: SocketAddr,
    acceptor: Option<JoinHandle<()>>,
}

impl FakeEndpoint {
    pub fn start() -> FakeEndpoint {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name("fake-endpoint-accept".to_string())
                .spawn(move || accept_loop(listener, shared))
                .unwrap()
        };
        FakeEndpoint {
            shared,
            addr,
            acceptor: Some(acceptor),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:PORT/ping/<id>`.
    pub fn ping_url(&self, id: &str) -> String {
        format!("{}/ping/{id}", self.url())
    }

    /// Answers requests for `path` (the target without its query) so.
    pub fn answer(&self, path: &str, answer: Answer) {
        self.shared.lock().answers.insert(path.to_string(), answer);
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.lock().requests.clone()
    }

    /// How many requests were answered (a hanging one never is).
    pub fn answered(&self) -> usize {
        self.shared.lock().answered
    }

    /// Blocks until `done(requests so far)` holds, and returns the
    /// requests then; fails the test, saying `what` and showing what did
    /// arrive, if it does not within [`DEADLINE`].
    #[track_caller]
    pub fn wait_until(&self, what: &str, mut done: impl FnMut(&[Request]) -> bool) -> Vec<Request> {
        let deadline = Instant::now() + DEADLINE;
        let mut state = self.shared.lock();
        loop {
            if done(&state.requests) {
                return state.requests.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let got: Vec<String> = state.requests.iter().map(Request::line).collect();
                panic!(
                    "fake endpoint: waited {}s for {what}; got {} request(s): {got:?}",
                    DEADLINE.as_secs(),
                    got.len()
                );
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Blocks until at least `n` requests arrived (see [`wait_until`]).
    ///
    /// [`wait_until`]: Self::wait_until
    #[track_caller]
    pub fn wait_for(&self, n: usize) -> Vec<Request> {
        self.wait_until(&format!("{n} request(s)"), |r| r.len() >= n)
    }

    /// Blocks until at least `n` requests for `method path` arrived, and
    /// returns every request so far.
    #[track_caller]
    pub fn wait_for_path(&self, method: &str, path: &str, n: usize) -> Vec<Request> {
        self.wait_until(&format!("{n} x {method} {path}"), |r| {
            r.iter()
                .filter(|q| q.method == method && q.path == path)
                .count()
                >= n
        })
    }
}

impl Drop for FakeEndpoint {
    fn drop(&mut self) {
        self.shared.lock().stopped = true;
        self.shared.changed.notify_all();
        // Wake the acceptor, which then sees the flag and stops listening.
        if TcpStream::connect_timeout(&self.addr, Duration::from_secs(2)).is_ok()
            && let Some(acceptor) = self.acceptor.take()
        {
            let _ = acceptor.join();
        }
        for (_, stream) in self.shared.lock().connections.drain() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut next_id: u64 = 0;
    for stream in listener.incoming() {
        if shared.lock().stopped {
            break;
        }
        let Ok(stream) = stream else {
            // Out of descriptors, say: back off instead of spinning.
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        let Ok(handle) = stream.try_clone() else {
            continue;
        };
        next_id += 1;
        let id = next_id;
        shared.lock().connections.insert(id, handle);
        let conn_shared = Arc::clone(&shared);
        let spawned = thread::Builder::new()
            .name(format!("fake-endpoint-conn-{id}"))
            .spawn(move || {
                serve_connection(stream, &conn_shared);
                conn_shared.lock().connections.remove(&id);
            });
        if spawned.is_err()
            && let Some(stream) = shared.lock().connections.remove(&id)
        {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
    // Stop listening for every copy of the socket (a child being forked by
    // another test thread holds one until it execs).
    let socket = TcpStream::from(std::os::fd::OwnedFd::from(listener));
    let _ = socket.shutdown(Shutdown::Both);
}

/// Serves one request on a connection: every answer says
/// `Connection: close`, so a client opens a connection per request.
fn serve_connection(stream: TcpStream, shared: &Shared) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let Ok(Some(request)) = read_request(&mut reader, &mut writer) else {
        return;
    };
    let target = request.path.split('?').next().unwrap_or("").to_string();
    let answer = {
        let mut state = shared.lock();
        if state.stopped {
            return;
        }
        state.requests.push(request);
        let answer = state.answers.get(&target).copied();
        drop(state);
        shared.changed.notify_all();
        answer.unwrap_or(Answer::Status(200))
    };
    let status = match answer {
        Answer::Hang => {
            let state = shared.lock();
            let _stopped = shared
                .changed
                .wait_while(state, |s| !s.stopped)
                .unwrap_or_else(PoisonError::into_inner);
            return;
        }
        Answer::Status(status) => status,
    };
    let body = format!("{status}\n");
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason(status),
        body.len()
    );
    let written = writer
        .write_all(head.as_bytes())
        .and_then(|()| writer.write_all(body.as_bytes()))
        .and_then(|()| writer.flush());
    if written.is_ok() {
        shared.lock().answered += 1;
    }
    let _ = writer.shutdown(Shutdown::Write);
}

fn read_line(reader: &mut impl BufRead) -> io::Result<Option<String>> {
    let mut line = Vec::new();
    let n = reader
        .by_ref()
        .take(64 << 10)
        .read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
    }
    let text = String::from_utf8_lossy(&line);
    Ok(Some(text.trim_end_matches(['\r', '\n']).to_string()))
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// Reads one request; `None` when the connection closed before one began.
fn read_request(reader: &mut impl BufRead, writer: &mut TcpStream) -> io::Result<Option<Request>> {
    let Some(first) = read_line(reader)? else {
        return Ok(None);
    };
    let mut parts = first.split(' ');
    let (Some(method), Some(path), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("bad request line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(bad("not HTTP/1.x"));
    }
    let mut headers = Vec::new();
    loop {
        let line = read_line(reader)?.ok_or_else(|| bad("eof in headers"))?;
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':').ok_or_else(|| bad("bad header"))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
        if headers.len() > 200 {
            return Err(bad("too many headers"));
        }
    }
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _): &&(String, String)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    if get("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
        writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let chunked =
        get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        read_chunked(reader)?
    } else {
        let len: usize = match get("content-length") {
            Some(v) => v.parse().map_err(|_| bad("bad content-length"))?,
            None => 0,
        };
        if len > MAX_BODY {
            return Err(bad("body too large"));
        }
        let mut body = vec![0; len];
        reader.read_exact(&mut body)?;
        body
    };
    Ok(Some(Request {
        method: method.to_string(),
        path: path.to_string(),
        headers,
        body,
    }))
}

fn read_chunked(reader: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = read_line(reader)?.ok_or_else(|| bad("eof in chunk size"))?;
        let size = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| bad("bad chunk size"))?;
        if size == 0 {
            // Trailers, up to the blank line.
            while let Some(line) = read_line(reader)? {
                if line.is_empty() {
                    break;
                }
            }
            return Ok(body);
        }
        if body.len() + size > MAX_BODY {
            return Err(bad("body too large"));
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        let mut crlf = [0u8; 2];
        reader.read_exact(&mut crlf)?;
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        408 => "Request Timeout",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}
