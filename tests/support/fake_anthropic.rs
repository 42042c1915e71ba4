//! A fake Anthropic Messages API on loopback, for running the real `claude`
//! CLI (`real_claude`) with `ANTHROPIC_BASE_URL` pointing here.
//!
//! Each `POST /v1/messages` the agent makes for a model turn takes the next
//! scripted [`Reply`] (a text answer, a tool call, an HTTP error, or no answer
//! at all, or a stalled stream); with the script empty it answers
//! `Text("ok")`. A streaming call
//! (`"stream": true`, what `claude -p` sends) gets the server-sent events of
//! the real API (`message_start`, `ping`, `content_block_start`,
//! `content_block_delta` with `text_delta` or `input_json_delta`,
//! `content_block_stop`, `message_delta` with `stop_reason` and `usage`,
//! `message_stop`); a non-streaming one gets the same message as JSON. The
//! usage reported is 1000 input / 200 output tokens unless set, so the CLI's
//! cost estimate (`total_cost_usd`) is not zero ($0.006 for
//! claude-sonnet-4-5).
//!
//! What the CLI 2.1.197 sends besides model turns: `HEAD /` (connection
//! warm-up, once per run), answered 200 with no body. Nothing else was seen in
//! the probe runs, but the fake answers, in case: side queries of the CLI
//! (session titles, tool-use summaries, web-fetch digests: `POST /v1/messages`
//! with no tools, thinking off, and not the agent's system prompt; see
//! [`Kind::Auxiliary`]) get `Text("ok")` without consuming the script; `POST
//! /v1/messages/count_tokens` gets `{"input_tokens":…}`; `GET /v1/models`
//! lists claude-sonnet-4-5; anything else is a 404 with an Anthropic error
//! body.
//!
//! Every request is recorded (method, path, headers, JSON body) before it is
//! answered, and can be awaited ([`FakeAnthropic::wait_for_message_requests`]).
//! Left out: images, thinking blocks, several content blocks per reply,
//! streaming that pauses between events, `retry-after` headers, and checking
//! the API key (any key is accepted; script an `Error` 401 to refuse one).
//!
//! tiny_http, a thread per request. Dropping the server answers every hung
//! request (a 500 `api_error`) and stops accepting. tiny_http cannot close a
//! kept-alive connection, so a client still running after the drop may wait
//! forever on its next request: stop the CLI first.

// Each including test uses a different subset of the API.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Request bodies are read up to this size (the CLI sends ~120 KB per turn).
const MAX_BODY: u64 = 64 * 1024 * 1024;
/// A marker of the agent's own system prompt, in every model turn of
/// `claude -p` and in no side query.
const AGENT_PROMPT_MARKER: &str = "You are an interactive agent";

/// One scripted answer to a model turn.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// One text block, `stop_reason` `end_turn`.
    Text(String),
    /// One `tool_use` block, `stop_reason` `tool_use`.
    ToolUse { name: String, input: Value },
    /// An HTTP error with the API's body
    /// `{"type":"error","error":{"type":…,"message":…},"request_id":…}`,
    /// e.g. 401 authentication_error, 429 rate_limit_error, 500 api_error,
    /// 529 overloaded_error.
    Error {
        status: u16,
        error_type: String,
        message: String,
    },
    /// Read the request and never answer, until the server is dropped (then
    /// a 500 `api_error`). A CLI interrupted in this state prints no
    /// `result` line.
    Hang,
    /// Answer 200 and stream `message_start`, then nothing more until the
    /// server is dropped (then an SSE `error` event ends the stream): the
    /// CLI is "waiting on the model", as in fixture `sigint-while-waiting`.
    Stall,
}

impl Reply {
    pub fn text(text: impl Into<String>) -> Reply {
        Reply::Text(text.into())
    }

    pub fn tool_use(name: impl Into<String>, input: Value) -> Reply {
        Reply::ToolUse {
            name: name.into(),
            input,
        }
    }

    pub fn error(status: u16, error_type: impl Into<String>, message: impl Into<String>) -> Reply {
        Reply::Error {
            status,
            error_type: error_type.into(),
            message: message.into(),
        }
    }
}

/// Token counts reported for a reply (`message_start` carries the input,
/// `message_delta` the output, as the real API does).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

impl Default for Usage {
    fn default() -> Usage {
        Usage {
            input_tokens: 1000,
            output_tokens: 200,
        }
    }
}

/// What a request was taken for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `POST /v1/messages` of a model turn: consumed a scripted reply.
    Message,
    /// `POST /v1/messages` that is one of the CLI's side queries (a title, a
    /// summary…: no tools offered, thinking not enabled, and not the agent's
    /// system prompt), answered `Text("ok")` outside the script.
    Auxiliary,
    /// `POST /v1/messages/count_tokens`.
    CountTokens,
    /// Anything else (`HEAD /`, `GET /v1/models`, unknown paths).
    Other,
}

/// A request as received.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// Path and query, e.g. `/v1/messages?beta=true`.
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// The body parsed as JSON; `Null` when empty or not JSON.
    pub body: Value,
    pub kind: Kind,
}

impl Request {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The path without the query string.
    pub fn path_only(&self) -> &str {
        self.path.split('?').next().unwrap_or("")
    }
}

/// The fake API; stops when dropped.
pub struct FakeAnthropic {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: Arc<tiny_http::Server>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled on every new request and on stop.
    changed: Condvar,
    stopping: AtomicBool,
    handlers: Mutex<Vec<JoinHandle<()>>>,
    ids: AtomicU64,
}

struct State {
    script: VecDeque<(Reply, Option<Usage>)>,
    usage: Usage,
    requests: Vec<Request>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn next_id(&self) -> String {
        // Unique across servers and processes: pid, a per-process counter.
        static GLOBAL: AtomicU64 = AtomicU64::new(0);
        let n = GLOBAL.fetch_add(1, Ordering::Relaxed);
        let local = self.ids.fetch_add(1, Ordering::Relaxed);
        format!("{:08x}{:06x}{:04x}", std::process::id(), n, local & 0xffff)
    }
}

impl FakeAnthropic {
    /// Listens on 127.0.0.1 on a free port.
    pub fn start() -> FakeAnthropic {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let addr = server.server_addr().to_ip().unwrap();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                script: VecDeque::new(),
                usage: Usage::default(),
                requests: Vec::new(),
            }),
            changed: Condvar::new(),
            stopping: AtomicBool::new(false),
            handlers: Mutex::new(Vec::new()),
            ids: AtomicU64::new(0),
        });
        let acceptor = {
            let (server, shared) = (server.clone(), shared.clone());
            thread::Builder::new()
                .name("fake-anthropic".into())
                .spawn(move || accept_loop(&server, &shared))
                .unwrap()
        };
        FakeAnthropic {
            addr,
            shared,
            server,
            acceptor: Some(acceptor),
        }
    }

    /// The value for `ANTHROPIC_BASE_URL`, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds a reply to the script, with the default usage.
    pub fn push(&self, reply: Reply) {
        self.shared.state().script.push_back((reply, None));
    }

    /// Adds a reply to the script that reports this usage.
    pub fn push_with_usage(&self, reply: Reply, usage: Usage) {
        self.shared.state().script.push_back((reply, Some(usage)));
    }

    /// The usage of replies pushed without one (and of the `ok` answered when
    /// the script is empty); 1000 in / 200 out unless set.
    pub fn set_usage(&self, usage: Usage) {
        self.shared.state().usage = usage;
    }

    /// Scripted replies not consumed yet.
    pub fn remaining(&self) -> usize {
        self.shared.state().script.len()
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.state().requests.clone()
    }

    /// The model-turn requests (those that consumed the script), in order.
    pub fn message_requests(&self) -> Vec<Request> {
        messages(&self.shared.state())
    }

    /// Waits until at least `n` model-turn requests have arrived and returns
    /// them all; panics after `timeout`, listing what did arrive.
    #[track_caller]
    pub fn wait_for_message_requests(&self, n: usize, timeout: Duration) -> Vec<Request> {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.state();
        loop {
            let got = messages(&state);
            if got.len() >= n {
                return got;
            }
            let now = Instant::now();
            if now >= deadline {
                let seen: Vec<String> = state
                    .requests
                    .iter()
                    .map(|r| format!("{} {} ({:?})", r.method, r.path, r.kind))
                    .collect();
                panic!(
                    "fake Anthropic API: {} of {n} message requests after {timeout:?}; \
                     requests: {seen:?}",
                    got.len()
                );
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

impl Drop for FakeAnthropic {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        {
            // Taking the lock orders the flag before the hung handlers' wait.
            let _state = self.shared.state();
            self.shared.changed.notify_all();
        }
        self.server.unblock();
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        let handlers = std::mem::take(
            &mut *self
                .shared
                .handlers
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for handler in handlers {
            let _ = handler.join();
        }
    }
}

fn messages(state: &State) -> Vec<Request> {
    state
        .requests
        .iter()
        .filter(|r| r.kind == Kind::Message)
        .cloned()
        .collect()
}

fn accept_loop(server: &tiny_http::Server, shared: &Arc<Shared>) {
    while !shared.stopping.load(Ordering::SeqCst) {
        let request = match server.recv_timeout(Duration::from_millis(100)) {
            Ok(Some(request)) => request,
            Ok(None) => continue,
            // An accept error (e.g. out of descriptors): keep serving, but
            // not in a tight loop.
            Err(_) => {
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let worker = shared.clone();
        let spawned = thread::Builder::new()
            .name("fake-anthropic-request".into())
            .spawn(move || handle(request, &worker));
        let mut handlers = shared
            .handlers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        handlers.retain(|h| !h.is_finished());
        // A failed spawn drops the request, which tiny_http answers 500.
        if let Ok(handle) = spawned {
            handlers.push(handle);
        }
    }
}

/// What to send back.
enum Answer {
    Empty(u16),
    Json(u16, Value),
    Events(String),
    Hang,
    /// The first events of a stream, then wait for the stop.
    Stall(String),
}

fn handle(mut request: tiny_http::Request, shared: &Shared) {
    let method = request.method().as_str().to_string();
    let path = request.url().to_string();
    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .map(|h| (h.field.as_str().to_string(), h.value.as_str().to_string()))
        .collect();
    let mut raw = Vec::new();
    // A body that cannot be read is recorded as empty; the answer still goes.
    let _ = request.as_reader().take(MAX_BODY).read_to_end(&mut raw);
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    let route = path.split('?').next().unwrap_or("").to_string();
    let kind = match (method.as_str(), route.as_str()) {
        ("POST", "/v1/messages") if is_auxiliary(&body) => Kind::Auxiliary,
        ("POST", "/v1/messages") => Kind::Message,
        ("POST", "/v1/messages/count_tokens") => Kind::CountTokens,
        _ => Kind::Other,
    };

    let request_id = format!("req_fake_{}", shared.next_id());
    let answer = {
        let mut state = shared.state();
        let (reply, usage) = match kind {
            Kind::Message => match state.script.pop_front() {
                Some((reply, usage)) => (reply, usage.unwrap_or(state.usage)),
                None => (Reply::text("ok"), state.usage),
            },
            _ => (Reply::text("ok"), state.usage),
        };
        state.requests.push(Request {
            method: method.clone(),
            path,
            headers,
            body: body.clone(),
            kind,
        });
        shared.changed.notify_all();
        match kind {
            Kind::Message | Kind::Auxiliary => {
                message_answer(shared, &body, &reply, usage, &request_id)
            }
            Kind::CountTokens => Answer::Json(
                200,
                // About four bytes a token, like the real tokenizer on prose.
                json!({ "input_tokens": (raw.len() / 4).max(1) }),
            ),
            Kind::Other => other_answer(&method, &route, &request_id),
        }
    };

    let response = match answer {
        Answer::Stall(events) => {
            stall(request.into_writer(), &events, shared);
            return;
        }
        Answer::Hang => {
            wait_for_stop(shared);
            json_response(
                500,
                &error_body("api_error", "fake API stopped", &request_id),
            )
        }
        Answer::Empty(status) => {
            tiny_http::Response::from_data(Vec::new()).with_status_code(status)
        }
        Answer::Json(status, value) => json_response(status, &value),
        Answer::Events(events) => {
            let response = tiny_http::Response::from_data(events.into_bytes());
            let response =
                with_header(response, "Content-Type", "text/event-stream; charset=utf-8");
            with_header(response, "Cache-Control", "no-cache")
        }
    };
    let response = with_header(response, "request-id", &request_id);
    // The client may be gone (killed CLI): nothing to do about it.
    let _ = request.respond(response);
}

fn wait_for_stop(shared: &Shared) {
    let mut state = shared.state();
    while !shared.stopping.load(Ordering::SeqCst) {
        state = shared
            .changed
            .wait(state)
            .unwrap_or_else(PoisonError::into_inner);
    }
}

/// Writes the response by hand (tiny_http buffers a streamed body): the head
/// and `events` as one chunk, flushed; at the stop an `error` event and the
/// end of the chunked body. Write errors mean the client is gone.
fn stall(mut writer: Box<dyn Write + Send>, events: &str, shared: &Shared) {
    let chunk = |data: &str| format!("{:x}\r\n{data}\r\n", data.len());
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n\
                Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n";
    let start = format!("{head}{}", chunk(events));
    if writer
        .write_all(start.as_bytes())
        .and_then(|()| writer.flush())
        .is_err()
    {
        return;
    }
    wait_for_stop(shared);
    let error = json!({
        "type": "error",
        "error": { "type": "api_error", "message": "fake API stopped" },
    });
    let end = format!(
        "{}0\r\n\r\n",
        chunk(&format!("event: error\ndata: {error}\n\n"))
    );
    let _ = writer
        .write_all(end.as_bytes())
        .and_then(|()| writer.flush());
}

/// Side queries of the CLI (its `tO` helper in 2.1.197: `tools: []`, thinking
/// disabled, a fixed system prompt of their own) versus model turns, which
/// always carry the agent's system prompt and, for models that think,
/// `thinking` enabled.
fn is_auxiliary(body: &Value) -> bool {
    let no_tools = body
        .get("tools")
        .and_then(Value::as_array)
        .is_none_or(|tools| tools.is_empty());
    let thinking = matches!(
        body.pointer("/thinking/type").and_then(Value::as_str),
        Some("enabled" | "adaptive")
    );
    let agent_prompt = match body.get("system") {
        Some(Value::String(text)) => text.contains(AGENT_PROMPT_MARKER),
        Some(Value::Array(blocks)) => blocks.iter().any(|b| {
            b.get("text")
                .and_then(Value::as_str)
                .is_some_and(|t| t.contains(AGENT_PROMPT_MARKER))
        }),
        _ => false,
    };
    no_tools && !thinking && !agent_prompt
}

fn message_answer(
    shared: &Shared,
    body: &Value,
    reply: &Reply,
    usage: Usage,
    request_id: &str,
) -> Answer {
    let (block, stop_reason) = match reply {
        Reply::Hang => return Answer::Hang,
        // Only the start of a text message, below.
        Reply::Stall => (json!({ "type": "text", "text": "" }), "end_turn"),
        Reply::Error {
            status,
            error_type,
            message,
        } => return Answer::Json(*status, error_body(error_type, message, request_id)),
        Reply::Text(text) => (json!({ "type": "text", "text": text }), "end_turn"),
        Reply::ToolUse { name, input } => (
            json!({
                "type": "tool_use",
                "id": format!("toolu_fake_{}", shared.next_id()),
                "name": name,
                "input": input,
            }),
            "tool_use",
        ),
    };
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("claude-sonnet-4-5");
    let id = format!("msg_fake_{}", shared.next_id());
    let streaming = body.get("stream").and_then(Value::as_bool) == Some(true);
    if !streaming && *reply == Reply::Stall {
        return Answer::Hang;
    }
    if !streaming {
        return Answer::Json(
            200,
            json!({
                "id": id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [block],
                "stop_reason": stop_reason,
                "stop_sequence": null,
                "usage": usage_json(usage.input_tokens, usage.output_tokens),
            }),
        );
    }
    let mut events = String::new();
    let mut event = |name: &str, data: Value| {
        events.push_str(&format!("event: {name}\ndata: {data}\n\n"));
    };
    event(
        "message_start",
        json!({
            "type": "message_start",
            "message": {
                "id": id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": usage_json(usage.input_tokens, 1),
            },
        }),
    );
    event("ping", json!({ "type": "ping" }));
    if *reply == Reply::Stall {
        return Answer::Stall(events);
    }
    let (start, deltas) = match reply {
        Reply::ToolUse { input, .. } => {
            let mut start = block.clone();
            start["input"] = json!({});
            // Two pieces, so the client has to join partial JSON.
            let text = input.to_string();
            let mut cut = text.len() / 2;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            let deltas = [&text[..cut], &text[cut..]]
                .iter()
                .filter(|piece| !piece.is_empty())
                .map(|piece| json!({ "type": "input_json_delta", "partial_json": piece }))
                .collect::<Vec<_>>();
            (start, deltas)
        }
        _ => {
            let text = block.get("text").cloned().unwrap_or(json!(""));
            (
                json!({ "type": "text", "text": "" }),
                vec![json!({ "type": "text_delta", "text": text })],
            )
        }
    };
    event(
        "content_block_start",
        json!({ "type": "content_block_start", "index": 0, "content_block": start }),
    );
    for delta in deltas {
        event(
            "content_block_delta",
            json!({ "type": "content_block_delta", "index": 0, "delta": delta }),
        );
    }
    event(
        "content_block_stop",
        json!({ "type": "content_block_stop", "index": 0 }),
    );
    event(
        "message_delta",
        json!({
            "type": "message_delta",
            "delta": { "stop_reason": stop_reason, "stop_sequence": null },
            "usage": { "output_tokens": usage.output_tokens },
        }),
    );
    event("message_stop", json!({ "type": "message_stop" }));
    Answer::Events(events)
}

fn other_answer(method: &str, route: &str, request_id: &str) -> Answer {
    match (method, route) {
        ("HEAD", _) => Answer::Empty(200),
        ("GET", "/v1/models") => Answer::Json(
            200,
            json!({
                "data": [{
                    "type": "model",
                    "id": "claude-sonnet-4-5",
                    "display_name": "Claude Sonnet 4.5",
                    "created_at": "2025-09-29T00:00:00Z",
                }],
                "has_more": false,
                "first_id": "claude-sonnet-4-5",
                "last_id": "claude-sonnet-4-5",
            }),
        ),
        _ => Answer::Json(
            404,
            error_body(
                "not_found_error",
                &format!("{method} {route} is not served by the fake API"),
                request_id,
            ),
        ),
    }
}

fn usage_json(input_tokens: u64, output_tokens: u64) -> Value {
    json!({
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    })
}

fn error_body(error_type: &str, message: &str, request_id: &str) -> Value {
    json!({
        "type": "error",
        "error": { "type": error_type, "message": message },
        "request_id": request_id,
    })
}

type Response = tiny_http::Response<std::io::Cursor<Vec<u8>>>;

fn json_response(status: u16, value: &Value) -> Response {
    let response =
        tiny_http::Response::from_data(value.to_string().into_bytes()).with_status_code(status);
    with_header(response, "Content-Type", "application/json")
}

fn with_header(response: Response, name: &str, value: &str) -> Response {
    // Names and values are literals or ids made here, always valid; a bad
    // one would only be left out.
    match tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()) {
        Ok(header) => response.with_header(header),
        Err(()) => response,
    }
}
