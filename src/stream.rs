//! Reads what `claude -p --output-format stream-json --verbose` prints on
//! stdout, chunk by chunk as the pipe delivers it, in bounded memory
//! (SPEC §6.2, §6.3), and keeps only what the runner decides and reports
//! with: the `system`/`init` line (MCP servers, version, session), the first
//! `result` line (outcome, answer, cost, tokens, turns, denials), the text
//! of the last assistant message and the API retries. An agent whose stdout
//! is not stream-json is kept as plain text.
//!
//! Format: the first non-blank line decides. It is stream-json as soon as it
//! is seen to be a JSON object whose top-level `type` is a string (the CLI
//! writes `{"type":…` first, so this is known after a few bytes; a line that
//! breaks later is then an ignored stream-json line). Anything else, an
//! object without a string `type` included, makes all of stdout plain text.
//! `--output-format json` (one result object) reads as stream-json.
//!
//! How: lines are split on `\n`. A line's `type` is read from its start;
//! lines the runner does not need (`user`, `stream_event`, …) are skipped
//! with a scan for the next newline and never buffered. Kept lines go
//! through a streaming JSON *projection*: only the members listed in
//! `Node::members` are copied, every string is cut at a small cap, lists
//! at a few entries, and the top-level `result` string is decoded straight
//! into its own buffer (capped at [`ANSWER_CAP`]), so what serde_json parses
//! afterwards is small and always valid JSON (lone surrogates and raw
//! control characters are repaired, invalid UTF-8 becomes U+FFFD). Nothing
//! here panics or grows without bound, whatever the bytes: the reader holds
//! the answer plus well under 1 MiB.
//!
//! This file is longer than the project's usual ~600 lines of code: the
//! projection is one state machine whose lexer, states and reader share
//! private fields; split into files, all of them would have to be
//! `pub(super)`, and the invariants would be harder to see together.
//!
//! Left out: deciding success or failure (the caller applies §6.3 to
//! [`AgentOutput`]), stderr, the process itself and its timeouts, and any
//! field not listed in `Node::members` (tool inputs, per-message usage,
//! `modelUsage`, durations…). A field of the wrong type reads as absent;
//! a repeated key keeps its first value.
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

use serde_json::{Map, Value};

/// Largest answer kept (SPEC §6.2): 8 MiB.
pub const ANSWER_CAP: usize = 8 << 20;

/// Cap of `last_assistant_text`, and so of the text copied from one
/// assistant line: it is shown in a failure note, not stored as an answer.
const TEXT_CAP: usize = 64 << 10;

/// Cap of the other strings kept (ids, names, statuses, subtypes): all are
/// short in practice, and a cap keeps the projected line small.
const LEAF_CAP: usize = 1 << 10;

/// Cap of one `errors[]` entry: a human-readable reason, a bit longer.
const ERROR_CAP: usize = 4 << 10;

/// Longest number copied: JavaScript never prints more than ~25 characters;
/// a longer one is no count or cost, and its line is dropped as not JSON.
const NUMBER_CAP: usize = 64;

/// Cap of a `result` string met on the first non-blank line while the format
/// is still undecided (only when `type` is not the first key, which the CLI
/// never does): the raw text for a plain-text fallback is held then too.
const UNDECIDED_RESULT_CAP: usize = 512 << 10;

/// Longest member name compared with the whitelist; longer keys are never
/// one we want.
const KEY_CAP: usize = 32;

/// Nesting of the projection's output; [`Node`] never goes deeper than 4,
/// the rest is a guard. Deeper input is skipped by a counter, not a stack.
const MAX_FRAMES: usize = 6;

/// What a scan looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The end of a line.
    Newline,
    /// What ends a run in a string being decoded or skipped: `"`, `\`.
    Str,
    /// Same, plus raw control characters, which a copied string escapes so
    /// the projection stays JSON.
    Emit,
    /// What matters in a skipped container: `"` and brackets.
    Tree,
}

/// `0x01` in every byte.
const LO: u64 = 0x0101_0101_0101_0101;
/// `0x80` in every byte.
const HI: u64 = 0x8080_8080_8080_8080;

/// Flags (with `0x80`) the zero bytes of `x`. Only the lowest flag is
/// exact (a borrow can flag bytes above it), which is all a search needs.
#[inline(always)]
fn zero_bytes(x: u64) -> u64 {
    x.wrapping_sub(LO) & !x & HI
}

impl Stop {
    /// Flags the wanted bytes of a little-endian word (lowest flag exact).
    #[inline(always)]
    fn mask(self, w: u64) -> u64 {
        let quote = zero_bytes(w ^ (LO * 0x22));
        match self {
            Stop::Newline => zero_bytes(w ^ (LO * 0x0A)),
            Stop::Str => quote | zero_bytes(w ^ (LO * 0x5C)),
            Stop::Emit => {
                quote | zero_bytes(w ^ (LO * 0x5C)) | (w.wrapping_sub(LO * 0x20) & !w & HI)
            }
            Stop::Tree => {
                // `[`/`{` and `]`/`}` differ only in bit 5.
                let folded = w | (LO * 0x20);
                quote | zero_bytes(folded ^ (LO * 0x7B)) | zero_bytes(folded ^ (LO * 0x7D))
            }
        }
    }

    /// Whether `b` is wanted (for the bytes after the last whole word).
    #[inline(always)]
    fn hit(self, b: u8) -> bool {
        match self {
            Stop::Newline => b == b'\n',
            Stop::Str => b == b'"' || b == b'\\',
            Stop::Emit => b == b'"' || b == b'\\' || b < 0x20,
            Stop::Tree => matches!(b, b'"' | b'{' | b'}' | b'[' | b']'),
        }
    }
}

/// Position of the first wanted byte of `s`, sixteen bytes at a time
/// (SWAR, no `unsafe`): every scan goes through here, so it sets the
/// reader's speed.
#[inline(always)]
fn find(s: &[u8], stop: Stop) -> Option<usize> {
    let mut chunks = s.chunks_exact(16);
    let mut base = 0usize;
    for c in &mut chunks {
        let (a, b) = c.split_at(8);
        let (Ok(a), Ok(b)) = (<[u8; 8]>::try_from(a), <[u8; 8]>::try_from(b)) else {
            break;
        };
        let ma = stop.mask(u64::from_le_bytes(a));
        let mb = stop.mask(u64::from_le_bytes(b));
        if ma | mb != 0 {
            let off = if ma != 0 {
                ma.trailing_zeros() / 8
            } else {
                8 + mb.trailing_zeros() / 8
            };
            return Some(base + off as usize);
        }
        base += 16;
    }
    s.get(base..)?
        .iter()
        .position(|&b| stop.hit(b))
        .map(|p| base + p)
}

/// JSON whitespace (`\n` never reaches the line machinery; it is listed
/// so the function is the JSON one).
fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Makes room for `additional` bytes without letting the capacity pass
/// `limit` (plain `Vec` doubling would turn an 8 MiB cap into 16 MiB).
fn reserve_bounded(buf: &mut Vec<u8>, additional: usize, limit: usize) {
    let need = buf.len().saturating_add(additional);
    if need > buf.capacity() {
        let target = need
            .max(buf.capacity().saturating_mul(2))
            .max(256)
            .min(limit.max(need));
        buf.reserve_exact(target.saturating_sub(buf.len()));
    }
}

/// Largest `k <= at` that is a char boundary of `s`, so a cut never splits a
/// character (`str::floor_char_boundary` is newer than the crate's MSRV).
fn floor_boundary(s: &str, at: usize) -> usize {
    let mut k = at.min(s.len());
    while k > 0 && !s.is_char_boundary(k) {
        k -= 1;
    }
    k
}

/// Truncates `s` to at most `cap` bytes on a char boundary.
fn truncate_str(s: &mut String, cap: usize) {
    if s.len() > cap {
        let k = floor_boundary(s, cap);
        s.truncate(k);
    }
}

/// Turns bytes into UTF-8 the way `String::from_utf8_lossy` does (one
/// U+FFFD per maximal invalid subpart), but incrementally, whatever the
/// chunk boundaries, and never writing past a length limit.
#[derive(Clone, Copy, Debug, Default)]
struct Lossy {
    /// The valid beginning of a character split by a chunk boundary.
    carry: [u8; 4],
    /// How many bytes of `carry` are in use (0 to 3).
    len: usize,
}

impl Lossy {
    /// Forgets a pending partial character (at the start of a new string).
    fn clear(&mut self) {
        self.len = 0;
    }

    /// Appends `src` to `out`, keeping `out.len() <= limit`. Returns false
    /// when something did not fit: the caller stops there (a cut).
    fn push(&mut self, out: &mut Vec<u8>, limit: usize, mut src: &[u8]) -> bool {
        while self.len > 0 {
            let Some(&lead) = self.carry.first() else {
                self.len = 0;
                break;
            };
            let width: usize = match lead {
                0xC2..=0xDF => 2,
                0xE0..=0xEF => 3,
                _ => 4,
            };
            let take = width.saturating_sub(self.len).min(src.len());
            let mut tmp = [0u8; 4];
            let have = self.len;
            let (Some(dst), Some(old), Some(new)) = (
                tmp.get_mut(..have + take),
                self.carry.get(..have),
                src.get(..take),
            ) else {
                self.len = 0;
                break;
            };
            let (a, b) = dst.split_at_mut(have);
            a.copy_from_slice(old);
            b.copy_from_slice(new);
            let tmp = &*dst;
            match std::str::from_utf8(tmp) {
                Ok(s) => {
                    self.len = 0;
                    src = src.get(take..).unwrap_or(&[]);
                    if !emit_str(out, limit, s) {
                        return false;
                    }
                }
                Err(e) if e.error_len().is_none() => {
                    // Still incomplete: all of `src` went into the carry.
                    self.carry = [0; 4];
                    if let Some(c) = self.carry.get_mut(..tmp.len()) {
                        c.copy_from_slice(tmp);
                    }
                    self.len = tmp.len();
                    return true;
                }
                Err(e) => {
                    // The carried prefix is invalid: one U+FFFD for it, then
                    // the bytes after it are read afresh.
                    let bad = e.error_len().unwrap_or(have).max(1);
                    self.len = 0;
                    if !emit_str(out, limit, "\u{FFFD}") {
                        return false;
                    }
                    if bad < have {
                        let rest: Vec<u8> = old.get(bad..).unwrap_or(&[]).to_vec();
                        if !self.push(out, limit, &rest) {
                            return false;
                        }
                    } else {
                        let used = bad - have;
                        src = src.get(used..).unwrap_or(&[]);
                    }
                }
            }
        }
        loop {
            match std::str::from_utf8(src) {
                Ok(s) => return emit_str(out, limit, s),
                Err(e) => {
                    let good = e.valid_up_to();
                    let (valid, rest) = src.split_at(good.min(src.len()));
                    if !emit_str(out, limit, std::str::from_utf8(valid).unwrap_or("")) {
                        return false;
                    }
                    match e.error_len() {
                        Some(n) => {
                            if !emit_str(out, limit, "\u{FFFD}") {
                                return false;
                            }
                            src = rest.get(n..).unwrap_or(&[]);
                        }
                        None => {
                            self.carry = [0; 4];
                            let n = rest.len().min(3);
                            if let (Some(c), Some(r)) = (self.carry.get_mut(..n), rest.get(..n)) {
                                c.copy_from_slice(r);
                            }
                            self.len = n;
                            return true;
                        }
                    }
                }
            }
        }
    }

    /// Ends a run of raw bytes (before an escape, a quote, the end): a
    /// partial character left over becomes U+FFFD.
    fn flush(&mut self, out: &mut Vec<u8>, limit: usize) -> bool {
        if self.len == 0 {
            return true;
        }
        self.len = 0;
        emit_str(out, limit, "\u{FFFD}")
    }

    /// Appends one decoded character (from an escape), flushing first.
    fn push_char(&mut self, out: &mut Vec<u8>, limit: usize, c: char) -> bool {
        if !self.flush(out, limit) {
            return false;
        }
        let mut b = [0u8; 4];
        emit_str(out, limit, c.encode_utf8(&mut b))
    }
}

/// Appends as much of `s` as fits under `limit`, on a char boundary; false
/// when not all of it fitted.
fn emit_str(out: &mut Vec<u8>, limit: usize, s: &str) -> bool {
    let room = limit.saturating_sub(out.len());
    if s.len() <= room {
        reserve_bounded(out, s.len(), limit);
        out.extend_from_slice(s.as_bytes());
        true
    } else {
        let k = floor_boundary(s, room);
        reserve_bounded(out, k, limit);
        out.extend_from_slice(s.as_bytes().get(..k).unwrap_or(&[]));
        false
    }
}

/// The plain-text side: stdout as lossy UTF-8, first [`ANSWER_CAP`] bytes.
#[derive(Debug, Default)]
struct TextSink {
    /// Always valid UTF-8.
    buf: Vec<u8>,
    /// A character split by a chunk boundary.
    lossy: Lossy,
    /// Something did not fit.
    truncated: bool,
}

impl TextSink {
    /// Appends bytes; beyond the cap they only set `truncated`.
    fn push(&mut self, bytes: &[u8]) {
        if !self.truncated
            && !bytes.is_empty()
            && !self.lossy.push(&mut self.buf, ANSWER_CAP, bytes)
        {
            self.truncated = true;
        }
    }

    /// The text and whether it was cut.
    fn finish(mut self) -> (String, bool) {
        if !self.truncated && !self.lossy.flush(&mut self.buf, ANSWER_CAP) {
            self.truncated = true;
        }
        (bytes_to_string(self.buf), self.truncated)
    }
}

/// A buffer this module filled with valid UTF-8, as a `String` without a
/// copy (the lossy branch is never taken; it is there instead of a panic).
fn bytes_to_string(buf: Vec<u8>) -> String {
    String::from_utf8(buf).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// What stdout turned out to be (decided by its first non-blank line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Nothing but whitespace was printed.
    #[default]
    Empty,
    /// JSON lines with a `type` (stream-json, or one `--output-format json`
    /// object).
    StreamJson,
    /// Anything else: a wrapper script, the bundled stand-in, `text` output.
    PlainText,
}

/// Everything the runner needs from an agent's stdout.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AgentOutput {
    /// How stdout was read.
    pub format: Format,
    /// The first `system`/`init` line.
    pub init: Option<Init>,
    /// The first `result` line that could be read.
    pub result: Option<ResultLine>,
    /// Text blocks (joined by `\n`) of the last assistant line whose text was
    /// not blank, capped at 64 KiB on a char boundary: the failure note's
    /// "Agent said" when there is no result text.
    pub last_assistant_text: Option<String>,
    /// `system`/`api_retry` lines seen.
    pub api_retries: u32,
    /// `error_status` of the last of them.
    pub last_api_retry_status: Option<u16>,
    /// PlainText only: stdout, first [`ANSWER_CAP`] bytes, lossy UTF-8.
    pub text: String,
    /// PlainText only: stdout was longer than [`ANSWER_CAP`].
    pub text_truncated: bool,
    /// StreamJson only: non-blank lines that were not JSON objects, were cut
    /// off (e.g. the last one, when the agent was killed), had a number
    /// longer than 64 characters, or that serde_json refused (a number out
    /// of range). Lines skipped by their `type` are not checked.
    pub ignored_lines: u64,
}

/// The `system`/`init` line: who ran, and whether the vault was reachable.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Init {
    /// `session_id`.
    pub session_id: Option<String>,
    /// `claude_code_version` (reported as `run_agent_version`).
    pub claude_code_version: Option<String>,
    /// `model` as the CLI resolved it.
    pub model: Option<String>,
    /// `permissionMode` as the CLI applied it.
    pub permission_mode: Option<String>,
    /// `mcp_servers`, in order (at most 64 entries).
    pub mcp_servers: Vec<McpServer>,
}

/// One `mcp_servers` entry: §6.3 requires the vault's to be `connected`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct McpServer {
    /// Server name from the MCP config.
    pub name: String,
    /// `connected`, `failed`, …; empty when the CLI gave none.
    pub status: String,
}

/// The first `result` line: the run's outcome as the CLI saw it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ResultLine {
    /// `success`, `error_max_turns`, `error_max_budget_usd`,
    /// `error_during_execution`; `success` even for API errors. Empty when
    /// absent.
    pub subtype: String,
    /// The real error flag (false when absent or not a bool).
    pub is_error: bool,
    /// HTTP status of a failed API call.
    pub api_error_status: Option<u16>,
    /// The answer (absent on limit stops), at most [`ANSWER_CAP`] bytes.
    pub result: Option<String>,
    /// `result` was longer than [`ANSWER_CAP`] and was cut.
    pub result_truncated: bool,
    /// `errors[]` of limit stops (at most 16, 4 KiB each).
    pub errors: Vec<String>,
    /// `num_turns`.
    pub num_turns: Option<u64>,
    /// `session_id`.
    pub session_id: Option<String>,
    /// `total_cost_usd`, the CLI's own estimate.
    pub total_cost_usd: Option<f64>,
    /// `usage`, summed over the run.
    pub usage: Option<Usage>,
    /// Denied tool names, in order, each once (from at most 64 entries).
    pub permission_denials: Vec<String>,
    /// `stop_reason` (null on an interrupted run).
    pub stop_reason: Option<String>,
    /// `terminal_reason` (absent on a budget stop).
    pub terminal_reason: Option<String>,
}

/// The token counts reported as `run_usage` (a missing count is 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// `input_tokens`.
    pub input_tokens: u64,
    /// `output_tokens`.
    pub output_tokens: u64,
    /// `cache_read_input_tokens`.
    pub cache_read_input_tokens: u64,
    /// `cache_creation_input_tokens`.
    pub cache_creation_input_tokens: u64,
}

/// Where a value sits in the projection: decides which members are kept
/// and how long strings may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    /// The line's object.
    Root,
    /// `message` of an assistant line.
    Message,
    /// `message.content[]` entries.
    Block,
    /// `mcp_servers[]` entries.
    Server,
    /// `permission_denials[]` entries.
    Denial,
    /// `usage` of a result line.
    Usage,
    /// `message.content`.
    Content,
    /// `mcp_servers`.
    Servers,
    /// `permission_denials`.
    Denials,
    /// `errors`.
    Errors,
    /// A scalar; strings cut at this many bytes.
    Leaf(usize),
    /// A text block's `text`: shares [`TEXT_CAP`] with the line's others.
    Text,
    /// The root `type`: read early to skip unwanted lines.
    Type,
    /// The root `result`: decoded into its own buffer.
    Result,
    /// The root `total_cost_usd`: its digits are kept for an exact parse
    /// (serde_json's default float parsing can be off by one ulp).
    Cost,
}

/// The members kept at the root, for all kept line types at once.
const ROOT_MEMBERS: &[(&str, Node)] = &[
    ("type", Node::Type),
    ("subtype", Node::Leaf(LEAF_CAP)),
    ("session_id", Node::Leaf(LEAF_CAP)),
    ("claude_code_version", Node::Leaf(LEAF_CAP)),
    ("model", Node::Leaf(LEAF_CAP)),
    ("permissionMode", Node::Leaf(LEAF_CAP)),
    ("mcp_servers", Node::Servers),
    ("error_status", Node::Leaf(LEAF_CAP)),
    ("message", Node::Message),
    ("is_error", Node::Leaf(LEAF_CAP)),
    ("api_error_status", Node::Leaf(LEAF_CAP)),
    ("num_turns", Node::Leaf(LEAF_CAP)),
    ("result", Node::Result),
    ("errors", Node::Errors),
    ("total_cost_usd", Node::Cost),
    ("usage", Node::Usage),
    ("permission_denials", Node::Denials),
    ("stop_reason", Node::Leaf(LEAF_CAP)),
    ("terminal_reason", Node::Leaf(LEAF_CAP)),
];

/// The token counts kept from `usage`.
const USAGE_MEMBERS: &[(&str, Node)] = &[
    ("input_tokens", Node::Leaf(LEAF_CAP)),
    ("output_tokens", Node::Leaf(LEAF_CAP)),
    ("cache_read_input_tokens", Node::Leaf(LEAF_CAP)),
    ("cache_creation_input_tokens", Node::Leaf(LEAF_CAP)),
];

/// How a node's value must look; anything else becomes `null`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// `{…}`.
    Object,
    /// `[…]`.
    Array,
    /// A string, number or literal.
    Scalar,
}

impl Node {
    /// The value kind kept at this place.
    fn shape(self) -> Shape {
        match self {
            Node::Root
            | Node::Message
            | Node::Block
            | Node::Server
            | Node::Denial
            | Node::Usage => Shape::Object,
            Node::Content | Node::Servers | Node::Denials | Node::Errors => Shape::Array,
            Node::Leaf(_) | Node::Text | Node::Type | Node::Result | Node::Cost => Shape::Scalar,
        }
    }

    /// The members an object node keeps (at most 32: a bit each in a mask).
    fn members(self) -> &'static [(&'static str, Node)] {
        match self {
            Node::Root => ROOT_MEMBERS,
            Node::Message => &[("content", Node::Content)],
            Node::Block => &[("type", Node::Leaf(LEAF_CAP)), ("text", Node::Text)],
            Node::Server => &[
                ("name", Node::Leaf(LEAF_CAP)),
                ("status", Node::Leaf(LEAF_CAP)),
            ],
            Node::Denial => &[("tool_name", Node::Leaf(LEAF_CAP))],
            Node::Usage => USAGE_MEMBERS,
            _ => &[],
        }
    }

    /// An array node's element node and how many elements are kept.
    fn element(self) -> Option<(Node, u32)> {
        match self {
            Node::Content => Some((Node::Block, 16)),
            Node::Servers => Some((Node::Server, 64)),
            Node::Denials => Some((Node::Denial, 64)),
            Node::Errors => Some((Node::Leaf(ERROR_CAP), 16)),
            _ => None,
        }
    }
}

/// One open container of the projection's output.
#[derive(Debug, Clone, Copy)]
struct Frame {
    /// What it is.
    node: Node,
    /// Members or elements written so far (for commas and list caps).
    count: u32,
    /// Members already written, by index in `Node::members`: a repeated
    /// key is dropped (first wins) so it cannot grow the output.
    seen: u32,
}

/// What to do with the value that comes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// Copy it as this node (or write `null` if its shape is wrong).
    Emit(Node),
    /// An array element: the parent frame decides.
    Elem,
    /// Drop it (its key was not written).
    Omit,
}

/// What is done with the string being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StrKind {
    /// Copied (escaped form) into the line, up to a cap.
    Emit,
    /// Decoded into the result buffer.
    Divert,
    /// Dropped.
    Skip,
    /// A member name, compared with the whitelist.
    Key,
}

/// Where a number is in the JSON number grammar (checked, so serde_json
/// never refuses a projected line for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Num {
    /// After `-`.
    Minus,
    /// A leading `0`.
    Zero,
    /// Integer digits.
    Int,
    /// After `.`.
    Dot,
    /// Fraction digits.
    Frac,
    /// After `e`.
    Exp,
    /// After the exponent's sign.
    ExpSign,
    /// Exponent digits.
    ExpInt,
}

impl Num {
    /// Whether a number may end here.
    fn terminal(self) -> bool {
        matches!(self, Num::Zero | Num::Int | Num::Frac | Num::ExpInt)
    }

    /// The state after byte `b`, or None if `b` does not continue a number.
    fn next(self, b: u8) -> Option<Num> {
        let digit = b.is_ascii_digit();
        match (self, b) {
            (Num::Minus, b'0') => Some(Num::Zero),
            (Num::Minus, _) if digit => Some(Num::Int),
            (Num::Zero | Num::Int | Num::Frac, b'e' | b'E') => Some(Num::Exp),
            (Num::Zero | Num::Int, b'.') => Some(Num::Dot),
            (Num::Int, _) if digit => Some(Num::Int),
            (Num::Dot | Num::Frac, _) if digit => Some(Num::Frac),
            (Num::Exp, b'+' | b'-') => Some(Num::ExpSign),
            (Num::Exp | Num::ExpSign | Num::ExpInt, _) if digit => Some(Num::ExpInt),
            _ => None,
        }
    }
}

/// The projection's lexer state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    /// Expecting a value.
    Value(Target),
    /// After `{`: a key or `}`.
    ObjFirst,
    /// After `,` in an object: a key.
    ObjKey,
    /// After a key: `:`, then the value goes to this target.
    Colon(Target),
    /// After a value: `,` or a closer.
    AfterValue,
    /// After `[`: a value or `]`.
    ArrFirst,
    /// Inside a string.
    Str(StrKind),
    /// After a backslash in a string.
    Esc(StrKind),
    /// Inside a number being copied.
    Num(Num),
    /// Inside `true`, `false` or `null` being copied: the word and how much
    /// of it was read.
    Lit(&'static [u8], usize),
    /// Inside a dropped number or literal (not checked).
    SkipScalar,
    /// Inside a dropped container (not checked): nesting, in a string, after
    /// a backslash.
    SkipTree(u64, bool, bool),
    /// The line's object is complete; the rest of the line is ignored.
    Done,
    /// Not JSON.
    Error,
}

/// What [`Filter::feed`] stopped for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ev {
    /// The input was used up.
    More,
    /// The root `type` string just ended: the reader decides on the line.
    Type,
    /// The line is not JSON.
    Error,
}

/// The streaming JSON projection of one kept line (reused line after line,
/// keeping its buffers).
#[derive(Debug)]
struct Filter {
    /// The projected line: valid JSON once `st` is `Done`.
    out: Vec<u8>,
    /// The decoded root `result` string (valid UTF-8).
    side: Vec<u8>,
    /// Open containers of `out`.
    stack: [Frame; MAX_FRAMES],
    /// How many of `stack` are open.
    depth: usize,
    /// Lexer state.
    st: St,
    /// The member name being read.
    key: [u8; KEY_CAP],
    /// Its length so far.
    key_len: usize,
    /// It is too long or has an escape: not a whitelisted key.
    key_bad: bool,
    /// Where the current copied string's content starts in `out`.
    str_start: usize,
    /// Where it must end at the latest.
    str_end: usize,
    /// It has been cut; the rest is skipped.
    str_cut: bool,
    /// It is a text block's text.
    str_text: bool,
    /// It is the root `type`.
    str_type: bool,
    /// It had an escape (a `type` with one is not compared early).
    str_escaped: bool,
    /// Characters split across chunks in the current string.
    lossy: Lossy,
    /// Position in `out` of a copied `\uD8xx` waiting for its low half.
    pending_high: Option<usize>,
    /// A decoded high surrogate waiting for its low half (result buffer).
    pending_code: Option<u32>,
    /// Bytes of the escape being read after the backslash.
    esc: [u8; 5],
    /// How many of them.
    esc_len: usize,
    /// Length of the number being copied.
    num_len: usize,
    /// Where the root `total_cost_usd` number being copied starts in `out`.
    num_start: Option<usize>,
    /// Where it sits once complete.
    cost_span: Option<(usize, usize)>,
    /// Text bytes the line may still copy (shared by its text blocks).
    text_budget: usize,
    /// The root `result` may be decoded (no result kept yet).
    allow_result: bool,
    /// Cap of the decoded `result`.
    result_cap: usize,
    /// The root `result` was a string and went to `side`.
    diverted: bool,
    /// `side` was cut at `result_cap`.
    side_cut: bool,
    /// Where the root `type` string sits in `out`, if plain (no escape, not
    /// cut).
    type_span: Option<(usize, usize)>,
    /// The root `type` string just ended: stop and report it.
    paused: bool,
}

impl Filter {
    /// An idle filter.
    fn new() -> Filter {
        Filter {
            out: Vec::new(),
            side: Vec::new(),
            stack: [Frame {
                node: Node::Root,
                count: 0,
                seen: 0,
            }; MAX_FRAMES],
            depth: 0,
            st: St::Done,
            key: [0; KEY_CAP],
            key_len: 0,
            key_bad: false,
            str_start: 0,
            str_end: 0,
            str_cut: false,
            str_text: false,
            str_type: false,
            str_escaped: false,
            lossy: Lossy::default(),
            pending_high: None,
            pending_code: None,
            esc: [0; 5],
            esc_len: 0,
            num_len: 0,
            num_start: None,
            cost_span: None,
            text_budget: TEXT_CAP,
            allow_result: false,
            result_cap: ANSWER_CAP,
            diverted: false,
            side_cut: false,
            type_span: None,
            paused: false,
        }
    }

    /// Gets ready for a line whose first byte is `{` (not yet fed).
    fn start(&mut self, allow_result: bool, result_cap: usize) {
        self.out.clear();
        self.side.clear();
        self.depth = 0;
        self.st = St::Value(Target::Emit(Node::Root));
        self.text_budget = TEXT_CAP;
        self.allow_result = allow_result;
        self.result_cap = result_cap;
        self.diverted = false;
        self.side_cut = false;
        self.type_span = None;
        self.num_start = None;
        self.cost_span = None;
        self.paused = false;
    }

    /// The root `type` if it was a plain string (None: escaped, cut, or not
    /// seen).
    fn type_name(&self) -> Option<&[u8]> {
        let (a, b) = self.type_span?;
        self.out.get(a..b)
    }

    /// The root `total_cost_usd`, parsed exactly from its digits.
    fn cost(&self) -> Option<f64> {
        let (a, b) = self.cost_span?;
        let digits = std::str::from_utf8(self.out.get(a..b)?).ok()?;
        digits.parse::<f64>().ok().filter(|c| c.is_finite())
    }

    /// Whether the line's object was complete.
    fn is_done(&self) -> bool {
        self.st == St::Done
    }

    /// The decoded `result`, leaving an empty buffer behind.
    fn take_side(&mut self) -> String {
        bytes_to_string(std::mem::take(&mut self.side))
    }

    /// Feeds part of a line (no `\n` in it). Returns how much was used and
    /// why it stopped; after [`Ev::Type`] the caller feeds the rest again.
    fn feed(&mut self, input: &[u8]) -> (usize, Ev) {
        let mut i = 0;
        while let Some(rest) = input.get(i..) {
            let Some(&b) = rest.first() else { break };
            match self.st {
                St::Done => return (input.len(), Ev::More),
                St::Error => return (i, Ev::Error),
                St::Str(kind) => i += self.string(rest, kind),
                St::SkipTree(..) => i += self.skip_tree(rest),
                _ => {
                    i += 1;
                    self.step(b);
                }
            }
            if self.paused {
                self.paused = false;
                return (i, Ev::Type);
            }
            if matches!(self.st, St::Error) {
                return (i, Ev::Error);
            }
        }
        (input.len(), Ev::More)
    }

    /// Marks the line as not JSON.
    fn fail(&mut self) {
        self.st = St::Error;
    }

    /// The innermost open container.
    fn top(&mut self) -> Option<&mut Frame> {
        let d = self.depth.checked_sub(1)?;
        self.stack.get_mut(d)
    }

    /// One structural byte.
    fn step(&mut self, b: u8) {
        match self.st {
            St::Value(t) => self.value_start(b, t),
            St::ObjFirst => match b {
                b'"' => self.key_start(),
                b'}' => self.close(),
                _ if is_ws(b) => {}
                _ => self.fail(),
            },
            St::ObjKey => match b {
                b'"' => self.key_start(),
                _ if is_ws(b) => {}
                _ => self.fail(),
            },
            St::Colon(t) => match b {
                b':' => self.st = St::Value(t),
                _ if is_ws(b) => {}
                _ => self.fail(),
            },
            St::ArrFirst => match b {
                b']' => self.close(),
                _ if is_ws(b) => {}
                _ => self.value_start(b, Target::Elem),
            },
            St::AfterValue => self.after_value(b),
            St::Esc(kind) => self.escape_byte(b, kind),
            St::Num(n) => match n.next(b) {
                Some(next) => {
                    self.num_len += 1;
                    if self.num_len > NUMBER_CAP {
                        self.fail();
                    } else {
                        self.out.push(b);
                        self.st = St::Num(next);
                    }
                }
                None if n.terminal() => {
                    if let Some(start) = self.num_start.take() {
                        self.cost_span = Some((start, self.out.len()));
                    }
                    self.st = St::AfterValue;
                    self.after_value(b);
                }
                None => self.fail(),
            },
            St::Lit(word, pos) => {
                if word.get(pos) == Some(&b) {
                    self.out.push(b);
                    if pos + 1 >= word.len() {
                        self.st = St::AfterValue;
                    } else {
                        self.st = St::Lit(word, pos + 1);
                    }
                } else {
                    self.fail();
                }
            }
            St::SkipScalar => {
                if is_ws(b) || matches!(b, b',' | b'}' | b']') {
                    self.st = St::AfterValue;
                    self.after_value(b);
                }
            }
            St::Str(_) | St::SkipTree(..) | St::Done | St::Error => {}
        }
    }

    /// A byte after a complete value: `,`, a closer or whitespace.
    fn after_value(&mut self, b: u8) {
        if is_ws(b) {
            return;
        }
        let Some(frame) = self.top() else {
            self.st = St::Done;
            return;
        };
        match (frame.node.shape(), b) {
            (Shape::Object, b',') => self.st = St::ObjKey,
            (Shape::Object, b'}') | (Shape::Array, b']') => self.close(),
            (Shape::Array, b',') => self.st = St::Value(Target::Elem),
            _ => self.fail(),
        }
    }

    /// Closes the innermost container.
    fn close(&mut self) {
        let closer = match self.top().map(|f| f.node.shape()) {
            Some(Shape::Array) => b']',
            _ => b'}',
        };
        self.out.push(closer);
        self.depth = self.depth.saturating_sub(1);
        self.st = if self.depth == 0 {
            St::Done
        } else {
            St::AfterValue
        };
    }

    /// Opens a container in the output.
    fn open(&mut self, node: Node) {
        let Some(slot) = self.stack.get_mut(self.depth) else {
            self.fail();
            return;
        };
        *slot = Frame {
            node,
            count: 0,
            seen: 0,
        };
        self.depth += 1;
        let (opener, st) = match node.shape() {
            Shape::Array => (b'[', St::ArrFirst),
            _ => (b'{', St::ObjFirst),
        };
        self.out.push(opener);
        self.st = st;
    }

    /// The first byte of a value.
    fn value_start(&mut self, b: u8, t: Target) {
        if is_ws(b) {
            self.st = St::Value(t);
            return;
        }
        let t = match t {
            Target::Elem => self.elem_target(),
            t => t,
        };
        let shape = match t {
            Target::Emit(n) => Some(n.shape()),
            _ => None,
        };
        let room = self.depth < MAX_FRAMES;
        match b {
            b'{' | b'[' => {
                let want = if b == b'{' {
                    Shape::Object
                } else {
                    Shape::Array
                };
                match t {
                    Target::Emit(n) if shape == Some(want) && room => self.open(n),
                    Target::Emit(_) => {
                        self.out.extend_from_slice(b"null");
                        self.st = St::SkipTree(1, false, false);
                    }
                    _ => self.st = St::SkipTree(1, false, false),
                }
            }
            b'"' => match t {
                Target::Emit(Node::Leaf(cap)) => self.begin_string(cap, false, false),
                Target::Emit(Node::Cost) => self.begin_string(LEAF_CAP, false, false),
                Target::Emit(Node::Text) => self.begin_string(self.text_budget, true, false),
                Target::Emit(Node::Type) => self.begin_string(LEAF_CAP, false, self.depth == 1),
                Target::Emit(Node::Result) => self.begin_divert(),
                Target::Emit(_) => {
                    self.out.extend_from_slice(b"null");
                    self.st = St::Str(StrKind::Skip);
                }
                _ => self.st = St::Str(StrKind::Skip),
            },
            b'-' | b'0'..=b'9' | b't' | b'f' | b'n' => match t {
                Target::Emit(n) if shape == Some(Shape::Scalar) => {
                    if n == Node::Cost {
                        self.num_start = Some(self.out.len());
                    }
                    self.out.push(b);
                    self.st = match b {
                        b't' => St::Lit(b"true", 1),
                        b'f' => St::Lit(b"false", 1),
                        b'n' => St::Lit(b"null", 1),
                        b'-' => St::Num(Num::Minus),
                        b'0' => St::Num(Num::Zero),
                        _ => St::Num(Num::Int),
                    };
                    self.num_len = 1;
                }
                Target::Emit(_) => {
                    self.out.extend_from_slice(b"null");
                    self.st = St::SkipScalar;
                }
                _ => self.st = St::SkipScalar,
            },
            _ => self.fail(),
        }
    }

    /// Decides on an array element: kept (comma written) while the list has
    /// room, dropped after.
    fn elem_target(&mut self) -> Target {
        let Some(frame) = self.top() else {
            return Target::Omit;
        };
        let Some((node, max)) = frame.node.element() else {
            return Target::Omit;
        };
        if frame.count >= max {
            return Target::Omit;
        }
        let comma = frame.count > 0;
        frame.count += 1;
        if comma {
            self.out.push(b',');
        }
        Target::Emit(node)
    }

    /// A member name starts.
    fn key_start(&mut self) {
        self.key_len = 0;
        self.key_bad = false;
        self.st = St::Str(StrKind::Key);
    }

    /// A member name ended: keep the member (write `,"name":`) or drop it.
    fn key_done(&mut self) {
        let allow_result = self.allow_result;
        let key = self.key.get(..self.key_len).unwrap_or(&[]);
        let key_bad = self.key_bad;
        let mut target = Target::Omit;
        let depth = self.depth;
        if let Some(d) = depth.checked_sub(1)
            && let Some(frame) = self.stack.get_mut(d)
            && !key_bad
            && let Some((idx, &(name, node))) = frame
                .node
                .members()
                .iter()
                .enumerate()
                .find(|(_, (n, _))| n.as_bytes() == key)
        {
            let bit = 1u32 << (idx as u32 & 31);
            if frame.seen & bit == 0 && (node != Node::Result || allow_result) {
                frame.seen |= bit;
                let comma = frame.count > 0;
                frame.count += 1;
                if comma {
                    self.out.push(b',');
                }
                self.out.push(b'"');
                self.out.extend_from_slice(name.as_bytes());
                self.out.extend_from_slice(b"\":");
                target = Target::Emit(node);
            }
        }
        self.st = St::Colon(target);
    }

    /// A copied string starts: `cap` bytes of content at most.
    fn begin_string(&mut self, cap: usize, text: bool, ty: bool) {
        self.out.push(b'"');
        self.str_start = self.out.len();
        self.str_end = self.str_start.saturating_add(cap);
        self.str_cut = false;
        self.str_text = text;
        self.str_type = ty;
        self.str_escaped = false;
        self.pending_high = None;
        self.lossy.clear();
        self.st = St::Str(StrKind::Emit);
    }

    /// The root `result` string starts: decoded into `side`.
    fn begin_divert(&mut self) {
        self.side.clear();
        self.side_cut = false;
        self.pending_code = None;
        self.lossy.clear();
        self.st = St::Str(StrKind::Divert);
    }

    /// A run of string bytes up to and including the next special byte.
    /// Returns the bytes used (at least one).
    fn string(&mut self, rest: &[u8], kind: StrKind) -> usize {
        let stop = match kind {
            StrKind::Emit if !self.str_cut => Stop::Emit,
            _ => Stop::Str,
        };
        let p = find(rest, stop).unwrap_or(rest.len());
        let (run, tail) = rest.split_at(p);
        match kind {
            StrKind::Emit => {
                if !self.str_cut && !run.is_empty() {
                    self.fix_pending();
                    if !self.lossy.push(&mut self.out, self.str_end, run) {
                        self.cut_string();
                    }
                }
            }
            StrKind::Divert => {
                if !self.side_cut && !run.is_empty() {
                    self.fix_pending_code();
                    if !self.side_cut && !self.lossy.push(&mut self.side, self.result_cap, run) {
                        self.side_cut = true;
                    }
                }
            }
            StrKind::Key => {
                let end = self.key_len.saturating_add(run.len());
                match self.key.get_mut(self.key_len..end) {
                    Some(dst) => {
                        dst.copy_from_slice(run);
                        self.key_len = end;
                    }
                    None => self.key_bad = true,
                }
            }
            StrKind::Skip => {}
        }
        let Some(&c) = tail.first() else {
            return p;
        };
        match c {
            b'"' => self.end_string(kind),
            b'\\' => {
                match kind {
                    StrKind::Emit if !self.str_cut => {
                        self.str_escaped = true;
                        if !self.lossy.flush(&mut self.out, self.str_end) {
                            self.cut_string();
                        }
                    }
                    StrKind::Divert
                        if !self.side_cut && !self.lossy.flush(&mut self.side, self.result_cap) =>
                    {
                        self.side_cut = true;
                    }
                    StrKind::Key => self.key_bad = true,
                    _ => {}
                }
                self.esc_len = 0;
                self.st = St::Esc(kind);
            }
            _ => {
                // A raw control character in a copied string: written as an
                // escape so the projection stays valid JSON.
                if !self.str_cut {
                    if !self.lossy.flush(&mut self.out, self.str_end) {
                        self.cut_string();
                    } else {
                        self.fix_pending();
                        let hex = b"0123456789abcdef";
                        let e = [
                            b'\\',
                            b'u',
                            b'0',
                            b'0',
                            hex.get(usize::from(c >> 4)).copied().unwrap_or(b'0'),
                            hex.get(usize::from(c & 15)).copied().unwrap_or(b'0'),
                        ];
                        self.emit_unit(&e);
                    }
                }
            }
        }
        p + 1
    }

    /// Writes an escape if it fits the string's cap, else cuts there.
    fn emit_unit(&mut self, unit: &[u8]) {
        if self.out.len().saturating_add(unit.len()) <= self.str_end {
            self.out.extend_from_slice(unit);
        } else {
            self.cut_string();
        }
    }

    /// Stops copying the current string (a lone high surrogate at the cut
    /// is dropped so the output stays valid).
    fn cut_string(&mut self) {
        self.str_cut = true;
        self.lossy.clear();
        if let Some(p) = self.pending_high.take() {
            self.out.truncate(p);
        }
    }

    /// A copied `\uD8xx` that got no low half becomes `\ufffd` (serde_json
    /// refuses lone surrogates, and with them the whole line).
    fn fix_pending(&mut self) {
        if let Some(p) = self.pending_high.take()
            && let Some(s) = self.out.get_mut(p..p.saturating_add(6))
        {
            s.copy_from_slice(b"\\ufffd");
        }
    }

    /// The decoded counterpart of [`Filter::fix_pending`].
    fn fix_pending_code(&mut self) {
        if self.pending_code.take().is_some() {
            self.side_char('\u{FFFD}');
        }
    }

    /// Appends a decoded character to the result buffer.
    fn side_char(&mut self, c: char) {
        if !self.side_cut && !self.lossy.push_char(&mut self.side, self.result_cap, c) {
            self.side_cut = true;
        }
    }

    /// The closing quote of a string.
    fn end_string(&mut self, kind: StrKind) {
        match kind {
            StrKind::Emit => {
                if !self.str_cut && !self.lossy.flush(&mut self.out, self.str_end) {
                    self.cut_string();
                }
                self.fix_pending();
                let end = self.out.len();
                self.out.push(b'"');
                if self.str_text {
                    let used = end.saturating_sub(self.str_start);
                    self.text_budget = self.text_budget.saturating_sub(used);
                }
                if self.str_type {
                    if !self.str_escaped && !self.str_cut {
                        self.type_span = Some((self.str_start, end));
                    }
                    self.paused = true;
                }
                self.st = St::AfterValue;
            }
            StrKind::Divert => {
                if !self.side_cut {
                    if !self.lossy.flush(&mut self.side, self.result_cap) {
                        self.side_cut = true;
                    }
                    self.fix_pending_code();
                }
                self.out.extend_from_slice(b"\"\"");
                self.diverted = true;
                self.st = St::AfterValue;
            }
            StrKind::Key => self.key_done(),
            StrKind::Skip => self.st = St::AfterValue,
        }
    }

    /// A byte of an escape sequence.
    fn escape_byte(&mut self, b: u8, kind: StrKind) {
        let live = match kind {
            StrKind::Emit => !self.str_cut,
            StrKind::Divert => !self.side_cut,
            _ => false,
        };
        if !live {
            // Skipped strings only need to know the escape does not end them;
            // `\uXXXX` digits are ordinary bytes.
            self.st = St::Str(kind);
            return;
        }
        if let Some(slot) = self.esc.get_mut(self.esc_len) {
            *slot = b;
        }
        self.esc_len += 1;
        if self.esc_len == 1 {
            match b {
                b'u' => {}
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {
                    self.simple_escape(b, kind);
                    self.st = St::Str(kind);
                }
                _ => self.fail(),
            }
            return;
        }
        if !b.is_ascii_hexdigit() {
            self.fail();
            return;
        }
        if self.esc_len == 5 {
            let hex = self.esc.get(1..5).unwrap_or(&[]);
            let code = std::str::from_utf8(hex)
                .ok()
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .unwrap_or(0xFFFD);
            self.unicode_escape(code, kind);
            self.st = St::Str(kind);
        }
    }

    /// `\"`, `\n` and the like.
    fn simple_escape(&mut self, b: u8, kind: StrKind) {
        if kind == StrKind::Emit {
            self.fix_pending();
            self.emit_unit(&[b'\\', b]);
            return;
        }
        self.fix_pending_code();
        let c = match b {
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            other => char::from(other),
        };
        self.side_char(c);
    }

    /// `\uXXXX`, pairing surrogates; a lone half becomes U+FFFD.
    fn unicode_escape(&mut self, code: u32, kind: StrKind) {
        let high = (0xD800..0xDC00).contains(&code);
        let low = (0xDC00..0xE000).contains(&code);
        if kind == StrKind::Emit {
            let mut unit = [0u8; 6];
            unit[0] = b'\\';
            if let (Some(dst), Some(src)) = (unit.get_mut(1..6), self.esc.get(..5)) {
                dst.copy_from_slice(src);
            }
            if high {
                self.fix_pending();
                let at = self.out.len();
                self.emit_unit(&unit);
                if !self.str_cut {
                    self.pending_high = Some(at);
                }
            } else if low {
                if self.pending_high.is_some() {
                    if self.out.len().saturating_add(6) <= self.str_end {
                        self.pending_high = None;
                        self.out.extend_from_slice(&unit);
                    } else {
                        self.cut_string();
                    }
                } else {
                    self.emit_unit(b"\\ufffd");
                }
            } else {
                self.fix_pending();
                self.emit_unit(&unit);
            }
            return;
        }
        if high {
            self.fix_pending_code();
            self.pending_code = Some(code);
        } else if low {
            match self.pending_code.take() {
                Some(h) => {
                    let c = 0x10000 + ((h - 0xD800) << 10) + (code - 0xDC00);
                    self.side_char(char::from_u32(c).unwrap_or('\u{FFFD}'));
                }
                None => self.side_char('\u{FFFD}'),
            }
        } else {
            self.fix_pending_code();
            self.side_char(char::from_u32(code).unwrap_or('\u{FFFD}'));
        }
    }

    /// Skips inside a dropped container by counting brackets outside
    /// strings. Returns the bytes used.
    fn skip_tree(&mut self, rest: &[u8]) -> usize {
        let St::SkipTree(mut depth, mut in_str, mut esc) = self.st else {
            return rest.len();
        };
        let mut i = 0;
        while let Some(tail) = rest.get(i..) {
            if tail.is_empty() {
                break;
            }
            if esc {
                esc = false;
                i += 1;
                continue;
            }
            let stop = if in_str { Stop::Str } else { Stop::Tree };
            let Some(p) = find(tail, stop) else {
                break;
            };
            i += p + 1;
            match tail.get(p) {
                Some(b'\\') => esc = true,
                Some(b'"') => in_str = !in_str,
                Some(b'{' | b'[') => depth = depth.saturating_add(1),
                _ => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        self.st = St::AfterValue;
                        return i;
                    }
                }
            }
        }
        self.st = St::SkipTree(depth, in_str, esc);
        rest.len()
    }
}

/// What stdout is known to be so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Detect {
    /// No non-blank line decided it yet: stdout is also kept as text.
    Undecided,
    /// stream-json.
    Json,
    /// Plain text: everything goes to the text sink.
    Plain,
}

/// Where the current line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// Only whitespace so far.
    Start,
    /// A JSON line being projected.
    Filter,
    /// A line being skipped to its newline.
    Skip,
}

/// Reads an agent's stdout chunk by chunk (as a pipe delivers it) in bounded
/// memory: the answer up to [`ANSWER_CAP`], plus well under 1 MiB of line
/// buffers and metadata.
#[derive(Debug)]
pub struct StreamReader {
    /// Format decision.
    format: Detect,
    /// Current line's state.
    line: Line,
    /// Projection of the current kept line.
    filter: Filter,
    /// stdout as text, while it may still be plain text.
    text: TextSink,
    /// What was read so far (format and text are set by `finish`).
    out: AgentOutput,
}

impl Default for StreamReader {
    fn default() -> Self {
        StreamReader::new()
    }
}

impl StreamReader {
    /// A reader for a fresh stdout.
    pub fn new() -> StreamReader {
        StreamReader {
            format: Detect::Undecided,
            line: Line::Start,
            filter: Filter::new(),
            text: TextSink::default(),
            out: AgentOutput::default(),
        }
    }

    /// Feeds bytes. Returns true exactly once: when this chunk completed the
    /// first `result` line that could be read (the caller then gives the
    /// agent 10 s to exit). Never for plain text.
    pub fn push(&mut self, chunk: &[u8]) -> bool {
        let mut fired = false;
        let mut rest = chunk;
        while !rest.is_empty() {
            if self.format == Detect::Plain {
                self.text.push(rest);
                break;
            }
            let nl = find(rest, Stop::Newline);
            let (part, after) = match nl {
                Some(p) => (
                    rest.get(..p).unwrap_or(&[]),
                    rest.get(p + 1..).unwrap_or(&[]),
                ),
                None => (rest, &[][..]),
            };
            if self.format == Detect::Undecided {
                let taken = nl.map_or(rest.len(), |p| p + 1);
                self.text.push(rest.get(..taken).unwrap_or(&[]));
            }
            self.feed_part(part);
            if nl.is_some() {
                fired |= self.end_line();
            }
            rest = after;
        }
        fired
    }

    /// End of stdout (a final line without a newline counts, though no
    /// `push` returned true for it).
    pub fn finish(mut self) -> AgentOutput {
        if self.format != Detect::Plain {
            self.end_line();
        }
        let mut out = self.out;
        out.format = match self.format {
            Detect::Undecided => Format::Empty,
            Detect::Json => Format::StreamJson,
            Detect::Plain => Format::PlainText,
        };
        if self.format == Detect::Plain {
            let (text, truncated) = self.text.finish();
            out.text = text;
            out.text_truncated = truncated;
        }
        out
    }

    /// Bytes held by the reader's buffers (capacity, not length): the
    /// memory bound the tests check.
    #[cfg(test)]
    fn held_bytes(&self) -> usize {
        let r = self.out.result.as_ref();
        self.filter.out.capacity()
            + self.filter.side.capacity()
            + self.text.buf.capacity()
            + r.and_then(|r| r.result.as_ref())
                .map_or(0, String::capacity)
            + self
                .out
                .last_assistant_text
                .as_ref()
                .map_or(0, String::capacity)
    }

    /// A line is not JSON: the first one makes stdout plain text, later ones
    /// are counted.
    fn not_json(&mut self) {
        if self.format == Detect::Undecided {
            self.format = Detect::Plain;
        } else {
            self.out.ignored_lines = self.out.ignored_lines.saturating_add(1);
        }
        self.line = Line::Skip;
    }

    /// Part of a line, without its newline.
    fn feed_part(&mut self, part: &[u8]) {
        let mut part = part;
        if self.line == Line::Start {
            let Some(p) = part.iter().position(|&b| !is_ws(b)) else {
                return;
            };
            part = part.get(p..).unwrap_or(&[]);
            if part.first() != Some(&b'{') {
                self.not_json();
                return;
            }
            let cap = if self.format == Detect::Undecided {
                UNDECIDED_RESULT_CAP
            } else {
                ANSWER_CAP
            };
            self.filter.start(self.out.result.is_none(), cap);
            self.line = Line::Filter;
        }
        if self.line != Line::Filter {
            return;
        }
        loop {
            let (used, ev) = self.filter.feed(part);
            match ev {
                Ev::More => return,
                Ev::Error => {
                    self.not_json();
                    return;
                }
                Ev::Type => {
                    if self.format == Detect::Undecided {
                        self.format = Detect::Json;
                        self.text = TextSink::default();
                        self.filter.result_cap = ANSWER_CAP;
                    }
                    let keep = match self.filter.type_name() {
                        None => true,
                        Some(b"system" | b"assistant") => true,
                        Some(b"result") => self.out.result.is_none(),
                        Some(_) => false,
                    };
                    if !keep {
                        self.line = Line::Skip;
                        return;
                    }
                    part = part.get(used..).unwrap_or(&[]);
                }
            }
        }
    }

    /// A newline (or the end of stdout). Returns true when it completed the
    /// first result line.
    fn end_line(&mut self) -> bool {
        let was = std::mem::replace(&mut self.line, Line::Start);
        if was != Line::Filter {
            return false;
        }
        if !self.filter.is_done() || self.format == Detect::Undecided {
            // Cut off, or (first line) a JSON value with no string `type`.
            self.not_json();
            self.line = Line::Start;
            return false;
        }
        let parsed = serde_json::from_slice::<Value>(&self.filter.out);
        let Ok(Value::Object(mut m)) = parsed else {
            self.out.ignored_lines = self.out.ignored_lines.saturating_add(1);
            return false;
        };
        match m.get("type").and_then(Value::as_str) {
            Some("system") => {
                self.system(&mut m);
                false
            }
            Some("assistant") => {
                self.assistant(&mut m);
                false
            }
            Some("result") if self.out.result.is_none() => {
                let result = if self.filter.diverted {
                    Some(self.filter.take_side())
                } else {
                    None
                };
                let truncated = self.filter.diverted && self.filter.side_cut;
                let mut line = result_line(&mut m, result, truncated);
                line.total_cost_usd = self.filter.cost();
                self.out.result = Some(line);
                true
            }
            _ => false,
        }
    }

    /// A `system` line: `init` (first one kept) or `api_retry`.
    fn system(&mut self, m: &mut Map<String, Value>) {
        match m.get("subtype").and_then(Value::as_str) {
            Some("init") if self.out.init.is_none() => {
                let mcp_servers = match m.remove("mcp_servers") {
                    Some(Value::Array(list)) => list
                        .into_iter()
                        .filter_map(|v| match v {
                            Value::Object(mut s) => Some(McpServer {
                                name: take_string(&mut s, "name")?,
                                status: take_string(&mut s, "status").unwrap_or_default(),
                            }),
                            _ => None,
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                self.out.init = Some(Init {
                    session_id: take_string(m, "session_id"),
                    claude_code_version: take_string(m, "claude_code_version"),
                    model: take_string(m, "model"),
                    permission_mode: take_string(m, "permissionMode"),
                    mcp_servers,
                });
            }
            Some("api_retry") => {
                self.out.api_retries = self.out.api_retries.saturating_add(1);
                self.out.last_api_retry_status = status(m.get("error_status"));
            }
            _ => {}
        }
    }

    /// An `assistant` line: its text blocks, if not blank, become the last
    /// assistant text.
    fn assistant(&mut self, m: &mut Map<String, Value>) {
        let Some(Value::Object(mut msg)) = m.remove("message") else {
            return;
        };
        let Some(Value::Array(blocks)) = msg.remove("content") else {
            return;
        };
        let mut text = String::new();
        for block in blocks {
            let Value::Object(mut b) = block else {
                continue;
            };
            if b.get("type").and_then(Value::as_str) != Some("text") {
                continue;
            }
            if let Some(t) = take_string(&mut b, "text") {
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(&t);
            }
        }
        if !text.trim().is_empty() {
            truncate_str(&mut text, TEXT_CAP);
            self.out.last_assistant_text = Some(text);
        }
    }
}

/// Moves a string member out (None when absent or not a string).
fn take_string(m: &mut Map<String, Value>, key: &str) -> Option<String> {
    match m.remove(key) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

/// An HTTP status (None when absent, not an integer, or out of range).
fn status(v: Option<&Value>) -> Option<u16> {
    v.and_then(Value::as_u64)
        .and_then(|n| u16::try_from(n).ok())
}

/// Builds the [`ResultLine`] from a projected `result` line; `result` is the
/// decoded answer when the line had one. `total_cost_usd` is left to the
/// caller, which parses its digits exactly.
fn result_line(m: &mut Map<String, Value>, result: Option<String>, truncated: bool) -> ResultLine {
    let errors = match m.remove("errors") {
        Some(Value::Array(list)) => list
            .into_iter()
            .filter_map(|v| match v {
                Value::String(s) => Some(s),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let usage = match m.get("usage") {
        Some(Value::Object(u)) => {
            let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
            Some(Usage {
                input_tokens: n("input_tokens"),
                output_tokens: n("output_tokens"),
                cache_read_input_tokens: n("cache_read_input_tokens"),
                cache_creation_input_tokens: n("cache_creation_input_tokens"),
            })
        }
        _ => None,
    };
    let mut permission_denials: Vec<String> = Vec::new();
    if let Some(Value::Array(list)) = m.remove("permission_denials") {
        for v in list {
            if let Value::Object(mut d) = v
                && let Some(name) = take_string(&mut d, "tool_name")
                && !permission_denials.contains(&name)
            {
                permission_denials.push(name);
            }
        }
    }
    ResultLine {
        subtype: take_string(m, "subtype").unwrap_or_default(),
        is_error: m.get("is_error").and_then(Value::as_bool).unwrap_or(false),
        api_error_status: status(m.get("api_error_status")),
        result,
        result_truncated: truncated,
        errors,
        num_turns: m.get("num_turns").and_then(Value::as_u64),
        session_id: take_string(m, "session_id"),
        total_cost_usd: None,
        usage,
        permission_denials,
        stop_reason: take_string(m, "stop_reason"),
        terminal_reason: take_string(m, "terminal_reason"),
    }
}

/// Unit tests; the fixtures are read at run time from tests/data/claude-cli.
#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    /// The committed copy of `shared/fixtures/claude-cli`.
    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/claude-cli/");

    /// What the reader may hold at most (SPEC §6.2 target).
    const HELD_BOUND: usize = ANSWER_CAP + (1 << 20);

    /// A small deterministic PRNG (SplitMix64, its state inside): no
    /// dev-dependency needed.
    struct Rng(u64);

    impl Rng {
        /// The next 64 random bits.
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        /// A number in `0..n` (`0` for `n == 0`).
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// A fixture's bytes.
    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!("{FIXTURES}{name}")).unwrap()
    }

    /// The captured stdouts, sorted.
    fn stdout_files() -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(FIXTURES)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.contains(".stdout."))
            .collect();
        v.sort();
        v
    }

    /// Reads `bytes` in one chunk.
    fn read_all(bytes: &[u8]) -> AgentOutput {
        let mut r = StreamReader::new();
        r.push(bytes);
        r.finish()
    }

    /// Feeds `bytes` in the given chunk sizes (cycled); returns the output
    /// and the indexes of the chunks for which `push` returned true.
    fn read_chunked(bytes: &[u8], sizes: &mut dyn FnMut() -> usize) -> (AgentOutput, Vec<usize>) {
        let mut r = StreamReader::new();
        let mut fired = Vec::new();
        let mut rest = bytes;
        let mut i = 0;
        while !rest.is_empty() {
            let n = sizes().clamp(1, rest.len());
            let (a, b) = rest.split_at(n);
            if r.push(a) {
                fired.push(i);
            }
            rest = b;
            i += 1;
        }
        (r.finish(), fired)
    }

    /// The init line's servers as (name, status).
    fn servers(out: &AgentOutput) -> Vec<(String, String)> {
        out.init
            .as_ref()
            .map(|i| {
                i.mcp_servers
                    .iter()
                    .map(|s| (s.name.clone(), s.status.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The important fields of one fixture.
    struct Expect {
        /// The stdout file.
        file: &'static str,
        /// How it reads.
        format: Format,
        /// Whether it has an init line.
        init: bool,
        /// Its MCP servers.
        servers: &'static [(&'static str, &'static str)],
        /// Its permission mode.
        permission_mode: Option<&'static str>,
        /// None: no result line.
        result: Option<ExpectResult>,
        /// The last assistant text.
        last_text: Option<&'static str>,
        /// api_retry lines.
        retries: u32,
        /// The last retry's status.
        retry_status: Option<u16>,
        /// Plain text.
        text: &'static str,
    }

    /// The important fields of a fixture's result line.
    struct ExpectResult {
        /// `subtype`.
        subtype: &'static str,
        /// `is_error`.
        is_error: bool,
        /// `api_error_status`.
        status: Option<u16>,
        /// `result`.
        result: Option<&'static str>,
        /// `errors`.
        errors: &'static [&'static str],
        /// `num_turns`.
        turns: u64,
        /// `total_cost_usd`.
        cost: f64,
        /// `usage` input and output tokens (the cache counts are all 0).
        usage: (u64, u64),
        /// Denied tool names.
        denials: &'static [&'static str],
        /// `stop_reason`.
        stop_reason: Option<&'static str>,
        /// `terminal_reason`.
        terminal_reason: Option<&'static str>,
    }

    /// The 500 fixture's message.
    const API_500: &str = "API Error: 500 Internal server error. This is a server-side issue, usually temporary — try again in a moment. If it persists, check your inference gateway (127.0.0.1:37149).";
    /// The 529 fixture's message.
    const API_529: &str = "API Error: 529 Overloaded. This is a server-side issue, usually temporary — try again in a moment. If it persists, check your inference gateway (127.0.0.1:35167).";
    /// The 429 fixture's message.
    const API_429: &str =
        "API Error: Request rejected (429) · Number of requests has exceeded your rate limit";

    /// A result line of an API error (which the CLI calls `success`).
    fn api_error(status: u16, msg: &'static str) -> ExpectResult {
        ExpectResult {
            subtype: "success",
            is_error: true,
            status: Some(status),
            result: Some(msg),
            errors: &[],
            turns: 1,
            cost: 0.0,
            usage: (0, 0),
            denials: &[],
            stop_reason: Some("stop_sequence"),
            terminal_reason: Some("completed"),
        }
    }

    /// A successful result line.
    fn ok(result: &'static str, turns: u64, cost: f64, usage: (u64, u64)) -> ExpectResult {
        ExpectResult {
            subtype: "success",
            is_error: false,
            status: None,
            result: Some(result),
            errors: &[],
            turns,
            cost,
            usage,
            denials: &[],
            stop_reason: Some("end_turn"),
            terminal_reason: Some("completed"),
        }
    }

    /// A stream-json fixture with an init line and no MCP server.
    fn stream(
        file: &'static str,
        result: Option<ExpectResult>,
        last: Option<&'static str>,
    ) -> Expect {
        Expect {
            file,
            format: Format::StreamJson,
            init: true,
            servers: &[],
            permission_mode: Some("bypassPermissions"),
            result,
            last_text: last,
            retries: 0,
            retry_status: None,
            text: "",
        }
    }

    /// What each fixture must read as (see the fixtures' README).
    fn table() -> Vec<Expect> {
        let lab_ok: &'static [(&str, &str)] = &[("lab", "connected")];
        vec![
            stream(
                "api-401.stdout.jsonl",
                Some(api_error(401, "Invalid API key · Fix external API key")),
                Some("Invalid API key · Fix external API key"),
            ),
            stream(
                "api-429.stdout.jsonl",
                Some(api_error(429, API_429)),
                Some(API_429),
            ),
            stream(
                "api-500.stdout.jsonl",
                Some(api_error(500, API_500)),
                Some(API_500),
            ),
            stream(
                "api-529.stdout.jsonl",
                Some(api_error(529, API_529)),
                Some(API_529),
            ),
            Expect {
                retries: 2,
                retry_status: Some(529),
                ..stream(
                    "api-529-then-ok.stdout.jsonl",
                    Some(ok("recovered", 1, 0.00045000000000000004, (100, 10))),
                    Some("recovered"),
                )
            },
            Expect {
                permission_mode: Some("dontAsk"),
                ..stream(
                    "bash-denied-dontask.stdout.jsonl",
                    Some(ExpectResult {
                        denials: &["Bash"],
                        ..ok("finished", 2, 0.000555, (110, 15))
                    }),
                    Some("finished"),
                )
            },
            stream(
                "bash-ran-bypass.stdout.jsonl",
                Some(ok("finished", 2, 0.000555, (110, 15))),
                Some("finished"),
            ),
            Expect {
                init: false,
                permission_mode: None,
                ..stream(
                    "empty-reply.stdout.json",
                    Some(ok("", 2, 0.00021, (20, 10))),
                    None,
                )
            },
            Expect {
                init: false,
                permission_mode: None,
                ..stream(
                    "max-budget.stdout.json",
                    Some(ExpectResult {
                        subtype: "error_max_budget_usd",
                        is_error: true,
                        result: None,
                        errors: &["Reached maximum budget ($0.0001)"],
                        terminal_reason: None,
                        ..ok("", 1, 1.8, (0, 0))
                    }),
                    None,
                )
            },
            stream(
                "max-turns.stdout.jsonl",
                Some(ExpectResult {
                    subtype: "error_max_turns",
                    is_error: true,
                    result: None,
                    errors: &["Reached maximum number of turns (1)"],
                    stop_reason: Some("tool_use"),
                    terminal_reason: Some("max_turns"),
                    ..ok("", 2, 0.000105, (10, 5))
                }),
                None,
            ),
            Expect {
                servers: &[("lab", "failed")],
                ..stream(
                    "mcp-server-failed.stdout.jsonl",
                    Some(ok("done", 2, 0.00021, (20, 10))),
                    Some("done"),
                )
            },
            Expect {
                servers: lab_ok,
                permission_mode: Some("dontAsk"),
                ..stream(
                    "mcp-tool-denied-dontask.stdout.jsonl",
                    Some(ExpectResult {
                        denials: &["mcp__lab__delete"],
                        ..ok("finished", 3, 0.00021, (20, 10))
                    }),
                    Some("finished"),
                )
            },
            Expect {
                servers: lab_ok,
                ..stream(
                    "sigint-while-waiting.stdout.jsonl",
                    Some(ExpectResult {
                        subtype: "error_during_execution",
                        is_error: true,
                        result: None,
                        errors: &[
                            "[ede_diagnostic] result_type=user last_content_type=n/a stop_reason=null",
                        ],
                        stop_reason: None,
                        terminal_reason: Some("aborted_streaming"),
                        ..ok("", 2, 0.0, (0, 0))
                    }),
                    None,
                )
            },
            Expect {
                servers: lab_ok,
                ..stream("sigterm-during-bash.stdout.jsonl", None, None)
            },
            stream(
                "success-after-tool.stdout.jsonl",
                Some(ok("The file says hello.", 2, 0.006855, (2010, 55))),
                Some("The file says hello."),
            ),
            Expect {
                init: false,
                permission_mode: None,
                ..stream(
                    "success-json.stdout.json",
                    Some(ok("Hello from fake", 1, 0.006, (1000, 200))),
                    None,
                )
            },
            stream(
                "success-text.stdout.jsonl",
                Some(ok("Hello from fake", 1, 0.006, (1000, 200))),
                Some("Hello from fake"),
            ),
            Expect {
                format: Format::PlainText,
                init: false,
                permission_mode: None,
                text: "API Error: 529 Overloaded. This is a server-side issue, usually temporary — try again in a moment. If it persists, check your inference gateway (127.0.0.1:36041).\n",
                ..stream("text-api-529.stdout.txt", None, None)
            },
            Expect {
                format: Format::PlainText,
                init: false,
                permission_mode: None,
                text: "Hello from fake\n",
                ..stream("text-success.stdout.txt", None, None)
            },
        ]
    }

    /// The table test over every captured stdout.
    #[test]
    fn every_fixture_reads_as_recorded() {
        let table = table();
        let mut covered: Vec<&str> = table.iter().map(|e| e.file).collect();
        covered.sort_unstable();
        assert_eq!(covered, stdout_files(), "the table covers every fixture");
        for e in &table {
            let out = read_all(&fixture(e.file));
            let f = e.file;
            assert_eq!(out.format, e.format, "{f}");
            assert_eq!(out.ignored_lines, 0, "{f}");
            assert_eq!(out.text, e.text, "{f}");
            assert!(!out.text_truncated, "{f}");
            assert_eq!(out.init.is_some(), e.init, "{f}");
            if let Some(init) = &out.init {
                assert_eq!(init.claude_code_version.as_deref(), Some("2.1.197"), "{f}");
                assert_eq!(init.model.as_deref(), Some("claude-sonnet-4-5"), "{f}");
                assert_eq!(init.permission_mode.as_deref(), e.permission_mode, "{f}");
                assert_eq!(init.session_id.as_ref().map(String::len), Some(36), "{f}");
            }
            let want: Vec<(String, String)> = e
                .servers
                .iter()
                .map(|(n, s)| (n.to_string(), s.to_string()))
                .collect();
            assert_eq!(servers(&out), want, "{f}");
            assert_eq!(out.last_assistant_text.as_deref(), e.last_text, "{f}");
            assert_eq!(out.api_retries, e.retries, "{f}");
            assert_eq!(out.last_api_retry_status, e.retry_status, "{f}");
            match (&out.result, &e.result) {
                (None, None) => {}
                (Some(r), Some(x)) => {
                    assert_eq!(r.subtype, x.subtype, "{f}");
                    assert_eq!(r.is_error, x.is_error, "{f}");
                    assert_eq!(r.api_error_status, x.status, "{f}");
                    assert_eq!(r.result.as_deref(), x.result, "{f}");
                    assert!(!r.result_truncated, "{f}");
                    assert_eq!(r.errors, x.errors, "{f}");
                    assert_eq!(r.num_turns, Some(x.turns), "{f}");
                    assert_eq!(r.total_cost_usd, Some(x.cost), "{f}");
                    let u = r.usage.unwrap();
                    assert_eq!((u.input_tokens, u.output_tokens), x.usage, "{f}");
                    assert_eq!(
                        (u.cache_read_input_tokens, u.cache_creation_input_tokens),
                        (0, 0)
                    );
                    assert_eq!(r.permission_denials, x.denials, "{f}");
                    assert_eq!(r.stop_reason.as_deref(), x.stop_reason, "{f}");
                    assert_eq!(r.terminal_reason.as_deref(), x.terminal_reason, "{f}");
                    assert_eq!(r.session_id.as_ref().map(String::len), Some(36), "{f}");
                    if let Some(init) = &out.init {
                        assert_eq!(r.session_id, init.session_id, "{f}");
                    }
                }
                (got, _) => panic!("{f}: result {got:?}"),
            }
        }
    }

    /// Byte by byte, random chunks, no final newline: same output, and
    /// `push` fires on the result line's newline.
    #[test]
    fn chunk_boundaries_do_not_matter() {
        let mut rng = Rng(7);
        for name in stdout_files() {
            let bytes = fixture(&name);
            let whole = read_all(&bytes);
            let (bytewise, fired) = read_chunked(&bytes, &mut || 1);
            assert_eq!(bytewise, whole, "{name} byte by byte");
            if whole.result.is_some() && whole.format == Format::StreamJson {
                // The chunk that held the result line's newline.
                let nl = bytes.iter().rposition(|&b| b == b'\n').unwrap();
                let start = bytes[..nl]
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |p| p + 1);
                assert!(
                    bytes[start..].starts_with(b"{\"type\":\"result\""),
                    "{name}"
                );
                assert_eq!(fired, vec![nl], "{name}");
            } else {
                assert!(fired.is_empty(), "{name}");
            }
            for _ in 0..50 {
                let max = 1 + rng.below(300);
                let (chunked, _) = read_chunked(&bytes, &mut || 1 + rng.below(max));
                assert_eq!(chunked, whole, "{name} random chunks");
            }
            // The final line without its newline counts.
            let trimmed = bytes.strip_suffix(b"\n").unwrap();
            let mut without = read_all(trimmed);
            if whole.format == Format::PlainText {
                without.text.push('\n');
            }
            assert_eq!(without, whole, "{name} without final newline");
        }
    }

    /// Every file of `dir`, by name.
    fn listing(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().into_string().unwrap(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    }

    /// tests/data/claude-cli is a byte-for-byte copy of shared/fixtures.
    #[test]
    fn committed_fixtures_match_shared_ones() {
        let shared: PathBuf = [
            env!("CARGO_MANIFEST_DIR"),
            "..",
            "shared",
            "fixtures",
            "claude-cli",
        ]
        .iter()
        .collect();
        if !shared.is_dir() {
            return;
        }
        let committed = listing(Path::new(FIXTURES));
        let original = listing(&shared);
        let names = |v: &[(String, Vec<u8>)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        assert_eq!(names(&committed), names(&original));
        for ((n, a), (_, b)) in committed.iter().zip(&original) {
            assert!(
                a == b,
                "tests/data/claude-cli/{n} differs from shared/fixtures/claude-cli/{n}"
            );
        }
        assert!(committed.iter().any(|(n, _)| n == "README.md"));
    }

    /// A result line like the CLI's, with `answer` as its (raw JSON) result.
    fn result_line_with(answer_json: &str) -> Vec<u8> {
        format!(
            concat!(
                r#"{{"type":"result","subtype":"success","is_error":false,"api_error_status":null,"#,
                r#""num_turns":3,"result":{},"stop_reason":"end_turn","session_id":"s-1","#,
                r#""total_cost_usd":1.25,"usage":{{"input_tokens":7,"cache_creation_input_tokens":2,"#,
                r#""cache_read_input_tokens":3,"output_tokens":5,"server_tool_use":{{"a":1}}}},"#,
                r#""modelUsage":{{}},"permission_denials":[{{"tool_name":"Write","tool_use_id":"t1","#,
                r#""tool_input":{{"content":"x"}}}},{{"tool_name":"Bash"}},{{"tool_name":"Write"}}],"#,
                r#""terminal_reason":"completed","uuid":"u"}}"#,
                "\n"
            ),
            answer_json
        )
        .into_bytes()
    }

    /// Feeds in 64 KiB chunks, checking the memory bound after each.
    fn read_bounded(bytes: &[u8], bound: usize) -> (AgentOutput, usize) {
        let mut r = StreamReader::new();
        let mut peak = 0;
        for c in bytes.chunks(64 << 10) {
            r.push(c);
            peak = peak.max(r.held_bytes());
            assert!(r.held_bytes() <= bound, "held {} > {bound}", r.held_bytes());
        }
        (r.finish(), peak)
    }

    /// A 20 MiB result is cut at the cap on a char boundary, in bounded
    /// memory, and the metadata after it is still read.
    #[test]
    fn huge_result_is_capped_and_later_fields_still_read() {
        // 20 MiB of "a€" (4 bytes): the cap falls inside a '€'.
        let body = "a€".repeat(5 << 20);
        let line = result_line_with(&format!("\"{body}\""));
        let (out, peak) = read_bounded(&line, HELD_BOUND);
        assert!(peak > ANSWER_CAP - 8, "the answer itself is held");
        let r = out.result.unwrap();
        assert!(r.result_truncated);
        let text = r.result.unwrap();
        assert!(text.len() <= ANSWER_CAP && text.len() > ANSWER_CAP - 4);
        assert!(body.starts_with(&text));
        assert_eq!(r.total_cost_usd, Some(1.25));
        assert_eq!(
            r.usage,
            Some(Usage {
                input_tokens: 7,
                output_tokens: 5,
                cache_read_input_tokens: 3,
                cache_creation_input_tokens: 2
            })
        );
        assert_eq!(r.permission_denials, ["Write", "Bash"]);
        assert_eq!(r.terminal_reason.as_deref(), Some("completed"));
        assert_eq!(r.num_turns, Some(3));

        // Exactly ANSWER_CAP bytes is not truncated; one more is.
        let exact = "b".repeat(ANSWER_CAP);
        let r = read_all(&result_line_with(&format!("\"{exact}\"")))
            .result
            .unwrap();
        assert!(!r.result_truncated);
        assert_eq!(r.result.unwrap().len(), ANSWER_CAP);
        let r = read_all(&result_line_with(&format!("\"{exact}c\"")))
            .result
            .unwrap();
        assert!(r.result_truncated);
        assert_eq!(r.result.unwrap(), exact);
    }

    /// The diverted result decodes escapes and repairs what is invalid.
    #[test]
    fn result_escapes_are_decoded() {
        let json = r#""line\n\"q\" \\ \/ \b\f\r\t \u00e9 \ud83d\ude00 lone:\ud83d x \ude00 \ud83d\ud83d\ude00 end\ud800""#;
        let want =
            "line\n\"q\" \\ / \u{8}\u{c}\r\t é 😀 lone:\u{FFFD} x \u{FFFD} \u{FFFD}😀 end\u{FFFD}";
        let line = result_line_with(json);
        let out = read_all(&line);
        assert_eq!(out.result.unwrap().result.as_deref(), Some(want));
        // serde_json agrees where the JSON is valid.
        let valid = r#""a\n\u00e9\ud83d\ude00\"""#;
        let got = read_all(&result_line_with(valid))
            .result
            .unwrap()
            .result
            .unwrap();
        assert_eq!(got, serde_json::from_str::<String>(valid).unwrap());
        // A raw control character and invalid UTF-8 inside the result.
        let mut raw = result_line_with("\"a\tb\u{1}cXd\"");
        let x = raw.iter().position(|&b| b == b'X').unwrap();
        raw[x] = 0xFF;
        let got = read_all(&raw).result.unwrap().result.unwrap();
        assert_eq!(got, "a\tb\u{1}c\u{FFFD}d");
    }

    /// A 30 MiB user line costs no memory.
    #[test]
    fn huge_user_line_is_skipped_without_buffering() {
        let mut s = Vec::new();
        s.extend_from_slice(&fixture("success-text.stdout.jsonl")[..0]);
        s.extend_from_slice(br#"{"type":"user","message":{"role":"user","content":[{"type":"tool_result","content":""#);
        s.extend(std::iter::repeat_n(b'x', 30 << 20));
        s.extend_from_slice(b"\"}]}}\n");
        s.extend_from_slice(&fixture("success-text.stdout.jsonl"));
        let (out, peak) = read_bounded(&s, 64 << 10);
        assert!(peak < 16 << 10, "peak {peak}");
        assert_eq!(
            out.result.unwrap().result.as_deref(),
            Some("Hello from fake")
        );
        assert_eq!(out.ignored_lines, 0);
    }

    /// Huge assistant/system lines are projected to a few KiB.
    #[test]
    fn huge_lines_of_kept_types_stay_small() {
        // An assistant line with a 12 MiB text and a 12 MiB tool input, a
        // system line with a 12 MiB unknown field, and a line with no
        // newline at all.
        let big = "y".repeat(12 << 20);
        let mut s = Vec::new();
        s.extend_from_slice(
            format!(
                r#"{{"type":"assistant","message":{{"content":[{{"type":"tool_use","input":{{"c":"{big}"}}}},{{"type":"text","text":"{big}"}},{{"type":"text","text":"more"}}]}}}}"#
            )
            .as_bytes(),
        );
        s.push(b'\n');
        s.extend_from_slice(format!(r#"{{"type":"system","subtype":"init","x":"{big}","mcp_servers":[{{"name":"v","status":"connected"}}]}}"#).as_bytes());
        s.push(b'\n');
        s.extend_from_slice(
            format!(r#"{{"type":"assistant","message":{{"content":"{big}"#).as_bytes(),
        );
        let (out, peak) = read_bounded(&s, 1 << 20);
        assert!(peak <= 512 << 10, "peak {peak}");
        let text = out.last_assistant_text.as_deref().unwrap();
        assert_eq!(text.len(), TEXT_CAP);
        assert!(text.bytes().all(|b| b == b'y'));
        assert_eq!(servers(&out), [("v".to_string(), "connected".to_string())]);
        assert_eq!(out.ignored_lines, 1, "the unterminated last line");
    }

    /// Plain text with no newline stops growing at the cap.
    #[test]
    fn plain_text_line_without_newline_is_bounded() {
        let mut r = StreamReader::new();
        let chunk = vec![b'z'; 1 << 20];
        for _ in 0..24 {
            r.push(&chunk);
            assert!(r.held_bytes() <= ANSWER_CAP);
        }
        let out = r.finish();
        assert_eq!(out.format, Format::PlainText);
        assert_eq!(out.text.len(), ANSWER_CAP);
        assert!(out.text_truncated);
    }

    /// `push` is true once, for the chunk with the first result's newline.
    #[test]
    fn push_returns_true_once_on_the_chunk_that_ends_the_result() {
        let bytes = fixture("success-text.stdout.jsonl");
        let start = bytes
            .windows(16)
            .position(|w| w == b"{\"type\":\"result\"")
            .unwrap();
        let mut r = StreamReader::new();
        assert!(!r.push(&bytes[..start + 10]));
        assert!(!r.push(&bytes[start + 10..bytes.len() - 1]));
        assert!(r.push(b"\n"));
        // A second result line does not fire again, nor replace the first.
        let other = result_line_with("\"second\"");
        assert!(!r.push(&other));
        let out = r.finish();
        assert_eq!(
            out.result.unwrap().result.as_deref(),
            Some("Hello from fake")
        );

        // A result line and the next line's start in one chunk.
        let mut r = StreamReader::new();
        let mut chunk = result_line_with("\"one\"");
        chunk.extend_from_slice(b"{\"type\":\"assis");
        assert!(r.push(&chunk));
        assert!(!r.push(b"tant\"}\n"));
        // An unreadable result line is not "the first result line".
        let mut r = StreamReader::new();
        assert!(!r.push(b"{\"type\":\"result\",\"num_turns\":01}\n"));
        assert!(r.push(&result_line_with("\"ok\"")));
        let out = r.finish();
        assert_eq!(out.ignored_lines, 1);
        assert_eq!(out.result.unwrap().result.as_deref(), Some("ok"));
    }

    /// CRLF line ends and blank lines change nothing.
    #[test]
    fn crlf_and_blank_lines_are_fine() {
        let lf = fixture("mcp-tool-denied-dontask.stdout.jsonl");
        let want = read_all(&lf);
        let crlf: Vec<u8> = lf
            .iter()
            .flat_map(|&b| {
                if b == b'\n' {
                    vec![b'\r', b'\n']
                } else {
                    vec![b]
                }
            })
            .collect();
        assert_eq!(read_all(&crlf), want);
        let mut spaced = b"\n  \r\n\t\n".to_vec();
        for line in lf.split_inclusive(|&b| b == b'\n') {
            spaced.extend_from_slice(b" \t");
            spaced.extend_from_slice(line);
            spaced.extend_from_slice(b"   \n\r\n\n");
        }
        assert_eq!(read_all(&spaced), want);
    }

    /// A non-JSON first line makes all of stdout plain text.
    #[test]
    fn a_banner_line_makes_plain_text() {
        let mut s = b"\n  \nWelcome to wrapper v1\n".to_vec();
        s.extend_from_slice(&fixture("success-text.stdout.jsonl"));
        let out = read_all(&s);
        assert_eq!(out.format, Format::PlainText);
        assert_eq!(out.text.as_bytes(), &s[..]);
        assert!(out.result.is_none() && out.init.is_none());
        // A first line that looks like JSON but is not.
        for first in [
            &b"{not json}\n"[..],
            b"{\"a\":1}\n",
            b"{\"type\":1}\n",
            b"[{\"type\":\"result\"}]\n",
            b"{\"type\" \"x\"}\n",
            b"{\"typ\\u0065\":\"result\"}\n",
        ] {
            let mut s = first.to_vec();
            s.extend_from_slice(&fixture("success-text.stdout.jsonl"));
            let out = read_all(&s);
            assert_eq!(
                out.format,
                Format::PlainText,
                "{}",
                String::from_utf8_lossy(first)
            );
            assert_eq!(out.text.as_bytes(), &s[..]);
        }
        // JSON whose `type` is not the first key still decides stream-json.
        let out = read_all(b"{\"x\":[1,{\"y\":null}],\"type\":\"weird\"}\nplain words\n");
        assert_eq!(out.format, Format::StreamJson);
        assert_eq!(out.ignored_lines, 1);
    }

    /// Nothing, or only whitespace, is `Empty`.
    #[test]
    fn empty_stdout() {
        for s in [&b""[..], b"\n", b"  \r\n\t\n   "] {
            let out = read_all(s);
            assert_eq!(out, AgentOutput::default());
        }
    }

    /// Plain text is `from_utf8_lossy`, cut at the cap on a char boundary.
    #[test]
    fn plain_text_is_lossy_and_capped() {
        let mut rng = Rng(3);
        for _ in 0..300 {
            let len = rng.below(64);
            let bytes: Vec<u8> = (0..len)
                .map(|_| match rng.below(4) {
                    0 => 0x80 | rng.below(64) as u8,
                    1 => 0xC0 | rng.below(64) as u8,
                    2 => b'a',
                    _ => rng.next() as u8,
                })
                .collect();
            let mut s = b"plain ".to_vec();
            s.extend_from_slice(&bytes);
            let (out, _) = read_chunked(&s, &mut || 1 + rng.below(5));
            assert_eq!(out.format, Format::PlainText);
            assert_eq!(out.text, String::from_utf8_lossy(&s), "{s:?}");
        }
        let mut s = "é".repeat(ANSWER_CAP / 2 + 7).into_bytes();
        s.insert(0, b'x'); // the cap now falls inside an 'é'
        let out = read_all(&s);
        assert!(out.text_truncated);
        assert_eq!(out.text.len(), ANSWER_CAP - 1);
    }

    /// The incremental decoder equals std's, whatever the chunks.
    #[test]
    fn lossy_matches_std_for_any_chunking_and_cap() {
        let mut rng = Rng(11);
        for _ in 0..2000 {
            let len = rng.below(40);
            let bytes: Vec<u8> = (0..len)
                .map(|_| match rng.below(5) {
                    0 => 0x80 | rng.below(64) as u8,
                    1 => 0xE0 | rng.below(32) as u8,
                    2 => 0xF0 | rng.below(16) as u8,
                    3 => b'q',
                    _ => rng.next() as u8,
                })
                .collect();
            let want = String::from_utf8_lossy(&bytes).into_owned();
            let limit = if rng.below(3) == 0 {
                rng.below(50)
            } else {
                usize::MAX
            };
            let mut out = Vec::new();
            let mut l = Lossy::default();
            let mut ok = true;
            let mut rest = &bytes[..];
            while ok && !rest.is_empty() {
                let n = (1 + rng.below(6)).min(rest.len());
                ok = l.push(&mut out, limit, &rest[..n]);
                rest = &rest[n..];
            }
            if ok {
                ok = l.flush(&mut out, limit);
            }
            let got = String::from_utf8(out).unwrap();
            if limit == usize::MAX {
                assert!(ok);
                assert_eq!(got, want, "{bytes:x?}");
            } else {
                // A cut: a prefix of whole characters of what std gives.
                assert!(want.starts_with(&got) && got.len() <= limit, "{bytes:x?}");
                assert_eq!(
                    ok,
                    want.len() <= limit && got == want,
                    "{bytes:x?} limit {limit}"
                );
            }
        }
    }

    /// A field of the wrong type reads as absent; the rest still reads.
    #[test]
    fn wrong_types_do_not_spoil_the_line() {
        let line = br#"{"type":"result","subtype":7,"is_error":"yes","api_error_status":70000,"result":{"a":"b"},"errors":"one reason","num_turns":-1,"total_cost_usd":"1","usage":"lots","permission_denials":{"tool_name":"Bash"},"session_id":["s"],"stop_reason":null}
"#;
        let r = read_all(line).result.unwrap();
        assert_eq!(r, ResultLine::default());
        let line = br#"{"type":"result","usage":{"input_tokens":"9","output_tokens":4.5,"cache_read_input_tokens":1},"permission_denials":[1,"Bash",{"tool_name":5},{"tool_name":"Read"}],"errors":[1,"e",null],"result":12}
"#;
        let r = read_all(line).result.unwrap();
        assert_eq!(
            r.usage,
            Some(Usage {
                cache_read_input_tokens: 1,
                ..Usage::default()
            })
        );
        assert_eq!(r.permission_denials, ["Read"]);
        assert_eq!(r.errors, ["e"]);
        assert_eq!(r.result, None);
        let init = br#"{"type":"system","subtype":"init","mcp_servers":[{"name":"a"},{"status":"connected"},"x",{"name":"b","status":1},{"name":"c","status":"failed"}],"claude_code_version":2}
"#;
        let out = read_all(init);
        assert_eq!(
            servers(&out),
            [("a", ""), ("b", ""), ("c", "failed")].map(|(a, b)| (a.to_string(), b.to_string()))
        );
        assert_eq!(out.init.unwrap().claude_code_version, None);
        let retry = b"{\"type\":\"system\",\"subtype\":\"api_retry\",\"error_status\":\"529\"}\n{\"type\":\"system\",\"subtype\":\"api_retry\",\"error_status\":503}\n";
        let out = read_all(retry);
        assert_eq!((out.api_retries, out.last_api_retry_status), (2, Some(503)));
        let assistant = br#"{"type":"assistant","message":{"content":[{"type":"text","text":5},{"type":"text"},"x",{"text":"no type"},{"type":"text","text":"a"},{"type":"text","text":"b"}]}}
{"type":"assistant","message":{"content":[{"type":"text","text":"  \n "}]}}
{"type":"assistant","message":"text"}
{"type":"assistant","message":{"content":{"type":"text","text":"x"}}}
"#;
        assert_eq!(
            read_all(assistant).last_assistant_text.as_deref(),
            Some("a\nb")
        );
    }

    /// Cutting a copied string never splits a character or an escape.
    #[test]
    fn copied_strings_are_cut_on_whole_characters() {
        let line = |text: &str| {
            format!(
                "{{\"type\":\"assistant\",\"message\":{{\"content\":[{{\"type\":\"text\",\"text\":\"{text}\"}}]}}}}\n"
            )
        };
        // (input, decoded, bytes it takes in the projection)
        for (unit, decoded, width) in [
            ("€", "€", 3),
            ("\\ud83d\\ude00", "😀", 12),
            ("a\\n", "a\n", 3),
            ("\\u00e9", "é", 6),
            ("\\\"", "\"", 2),
            ("\u{1}", "\u{1}", 6),
        ] {
            for pad in 0..12 {
                let text = format!("{}{}", "p".repeat(pad), unit.repeat(TEXT_CAP / 2));
                let got = read_all(line(&text).as_bytes())
                    .last_assistant_text
                    .unwrap();
                let want = format!("{}{}", "p".repeat(pad), decoded.repeat(TEXT_CAP));
                assert!(want.starts_with(&got), "{unit} {pad}");
                // Whole units were kept until the next would not fit.
                let units = (got.len() - pad) / decoded.len();
                assert!(
                    pad + (units + 1) * width > TEXT_CAP,
                    "{unit} {pad}: {units}"
                );
            }
        }
    }

    /// `type` late, escaped or repeated still reads.
    #[test]
    fn type_late_escaped_or_duplicated() {
        let s = br#"{"session_id":"s","result":"late","type":"result","num_turns":2}
{"type":"result","result":"second"}
"#;
        let out = read_all(s);
        assert_eq!(out.format, Format::StreamJson);
        let r = out.result.unwrap();
        assert_eq!((r.result.as_deref(), r.num_turns), (Some("late"), Some(2)));
        // An escaped type is read by serde_json after the whole line.
        let s = b"{\"type\":\"res\\u0075lt\",\"result\":\"esc\"}\n";
        assert_eq!(read_all(s).result.unwrap().result.as_deref(), Some("esc"));
        // Repeated keys: the first one wins, whatever its type.
        let s = b"{\"type\":\"result\",\"type\":\"user\",\"num_turns\":1,\"num_turns\":2,\"result\":\"a\",\"result\":\"b\"}\n";
        let r = read_all(s).result.unwrap();
        assert_eq!((r.result.as_deref(), r.num_turns), (Some("a"), Some(1)));
        // A result first in the first line, before `type`: capped while the
        // format is undecided.
        let big = "r".repeat(UNDECIDED_RESULT_CAP + 10);
        let s = format!("{{\"result\":\"{big}\",\"type\":\"result\"}}\n");
        let r = read_all(s.as_bytes()).result.unwrap();
        assert!(r.result_truncated);
        assert_eq!(r.result.unwrap().len(), UNDECIDED_RESULT_CAP);
        // On a later line it is not.
        let s = format!("{{\"type\":\"system\"}}\n{{\"result\":\"{big}\",\"type\":\"result\"}}\n");
        let r = read_all(s.as_bytes()).result.unwrap();
        assert!(!r.result_truncated);
        assert_eq!(r.result.unwrap(), big);
    }

    /// Deep nesting, NULs, bad UTF-8, broken JSON: counted, never a panic.
    #[test]
    fn deep_nesting_and_odd_bytes_never_panic() {
        let deep = "[".repeat(1 << 20);
        let mut s = format!(
            r#"{{"type":"assistant","message":{{"content":[{{"type":"tool_use","input":{deep}"#
        );
        s.push_str(&"]".repeat(1 << 20));
        s.push_str(r#"},{"type":"text","text":"after deep"}]}}"#);
        s.push('\n');
        s.push_str(&format!(r#"{{"type":"result","usage":{deep}"#));
        s.push('\n');
        s.push_str(&format!(
            "{{\"type\":\"assistant\",\"x\":{}\n",
            "{\"a\":".repeat(100_000)
        ));
        let out = read_all(s.as_bytes());
        assert_eq!(out.last_assistant_text.as_deref(), Some("after deep"));
        assert!(out.result.is_none());
        assert_eq!(out.ignored_lines, 2);

        let odd: &[&[u8]] = &[
            b"\0\0\0\n",
            b"{\"type\":\"assistant\",\"message\":{\"content\":[{\"type\":\"text\",\"text\":\"nul\0tab\tff\x0c\xff\xfe end \\ud800\"}]}}\n",
            b"{\"type\":\"result\",\"num_turns\":1e400}\n",
            b"{\"type\":\"result\",\"num_turns\":123456789012345678901234567890123456789012345678901234567890123456789}\n",
            b"{\"type\":\"result\",\"is_error\":tru}\n",
            b"{\"type\":\"result\",\"is_error\":true,}\n",
            b"{\"type\":\"result\"\n",
            b"{\"type\":\"result\",\"result\":\"\\x\"}\n",
            b"{\"type\":\"result\",\"result\":\"\\u12G4\"}\n",
            b"}\n{\n\"\n\\\n",
        ];
        let mut s = b"{\"type\":\"system\",\"subtype\":\"x\"}\n".to_vec();
        for o in odd {
            s.extend_from_slice(o);
        }
        let out = read_all(&s);
        assert_eq!(out.format, Format::StreamJson);
        assert_eq!(
            out.last_assistant_text.as_deref(),
            Some("nul\u{0}tab\tff\u{c}\u{FFFD}\u{FFFD} end \u{FFFD}")
        );
        assert!(out.result.is_none());
        assert_eq!(out.ignored_lines, odd.len() as u64 - 1 + 3, "{out:?}");
    }

    /// The projection of any mutated line is JSON serde_json accepts.
    #[test]
    fn the_projection_is_valid_json() {
        // Whatever the input line, a complete projection parses (serde_json
        // may still refuse a number out of f64 range).
        let mut rng = Rng(5);
        let lines: Vec<Vec<u8>> = stdout_files()
            .iter()
            .flat_map(|f| {
                fixture(f)
                    .split(|&b| b == b'\n')
                    .filter(|l| l.first() == Some(&b'{'))
                    .map(<[u8]>::to_vec)
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut done = 0;
        let rounds = std::env::var("STREAM_FUZZ_ROUNDS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(20_000);
        for round in 0..rounds {
            let mut line = lines[round % lines.len()].clone();
            mutate(&mut rng, &mut line);
            line.retain(|&b| b != b'\n');
            if line.first() != Some(&b'{') {
                continue;
            }
            let mut f = Filter::new();
            f.start(true, 1 << 10);
            let mut rest = &line[..];
            while !rest.is_empty() {
                let n = (1 + rng.below(40)).min(rest.len());
                let mut part = &rest[..n];
                loop {
                    let (used, ev) = f.feed(part);
                    if ev != Ev::Type {
                        break;
                    }
                    part = &part[used..];
                }
                rest = &rest[n..];
            }
            if f.is_done() {
                done += 1;
                if let Err(e) = serde_json::from_slice::<Value>(&f.out) {
                    assert!(
                        e.to_string().contains("out of range"),
                        "{e}: {}",
                        String::from_utf8_lossy(&f.out)
                    );
                }
                assert!(std::str::from_utf8(&f.side).is_ok());
            }
        }
        assert!(done > 1000, "{done}");
    }

    /// Flips, inserts, deletes or duplicates a few bytes, biased toward
    /// JSON's own punctuation.
    fn mutate(rng: &mut Rng, v: &mut Vec<u8>) {
        /// Bytes a mutation likes to insert.
        const SPECIAL: &[u8] = b"{}[]\":,\\\nu0e-.\xff\xc3\xa9\x00\r ";
        for _ in 0..1 + rng.below(4) {
            if v.is_empty() {
                v.push(b'{');
            }
            let at = rng.below(v.len());
            match rng.below(6) {
                0 => v[at] ^= 1 << rng.below(8),
                1 => v[at] = SPECIAL[rng.below(SPECIAL.len())],
                2 => v.insert(at, SPECIAL[rng.below(SPECIAL.len())]),
                3 => {
                    v.remove(at);
                }
                4 => {
                    let end = (at + rng.below(64)).min(v.len());
                    let dup = v[at..end].to_vec();
                    v.splice(at..at, dup);
                }
                _ => v.truncate(at),
            }
        }
    }

    /// Mutated and random stdouts: no panic, chunking changes nothing.
    #[test]
    fn fuzz_chunking_never_panics_nor_changes_the_answer() {
        let mut rng = Rng(42);
        let files = stdout_files();
        // STREAM_FUZZ_ROUNDS=1000000 for a longer run.
        let rounds = std::env::var("STREAM_FUZZ_ROUNDS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(3000);
        for round in 0..rounds {
            let mut bytes = fixture(&files[round % files.len()]);
            if round % 7 == 0 {
                bytes = (0..rng.below(600)).map(|_| rng.next() as u8).collect();
            } else if round % 3 != 0 {
                mutate(&mut rng, &mut bytes);
            }
            let whole = read_all(&bytes);
            let max = 1 + rng.below(if round % 2 == 0 { 8 } else { 500 });
            let (chunked, fired) = read_chunked(&bytes, &mut || 1 + rng.below(max));
            assert_eq!(
                chunked,
                whole,
                "round {round}: {}",
                String::from_utf8_lossy(&bytes)
            );
            assert!(fired.len() <= 1);
            assert_eq!(
                fired.len() == 1,
                whole.result.is_some() && {
                    // Fired only if the result line had its newline.
                    let mut r = StreamReader::new();
                    r.push(&bytes)
                }
            );
        }
    }

    /// The SWAR scans find what a byte loop finds.
    #[test]
    fn word_scans_agree_with_byte_scans() {
        let mut rng = Rng(17);
        let interesting = b"\n\"\\{}[]\x00\x1f\x20\x7b\x5b\x80\xff\xdb\xfb\x0a\x2a\x3b";
        for _ in 0..20_000 {
            let len = rng.below(70);
            let s: Vec<u8> = (0..len)
                .map(|_| {
                    if rng.below(8) == 0 {
                        interesting[rng.below(interesting.len())]
                    } else {
                        b'a' + rng.below(3) as u8
                    }
                })
                .collect();
            for stop in [Stop::Newline, Stop::Str, Stop::Emit, Stop::Tree] {
                let want = s.iter().position(|&b| stop.hit(b));
                assert_eq!(find(&s, stop), want, "{stop:?} {s:x?}");
            }
        }
        for b in 0..=255u8 {
            assert_eq!(Stop::Emit.hit(b), b < 0x20 || b == b'"' || b == b'\\');
            let w = u64::from_le_bytes([b; 8]);
            for stop in [Stop::Newline, Stop::Str, Stop::Emit, Stop::Tree] {
                assert_eq!(stop.mask(w) & 0x80 != 0, stop.hit(b), "{stop:?} {b:#x}");
            }
        }
    }

    /// Many small lines: counted right, nothing kept.
    #[test]
    fn many_small_lines() {
        let mut s = Vec::new();
        for i in 0..200_000 {
            match i % 4 {
                0 => s.extend_from_slice(b"{\"type\":\"user\"}\n"),
                1 => s.extend_from_slice(b"{\"type\":\"stream_event\",\"event\":{}}\n"),
                2 => s.extend_from_slice(b"{\"type\":\"system\",\"subtype\":\"api_retry\",\"error_status\":529}\n"),
                _ => s.extend_from_slice(b"{\"type\":\"assistant\",\"message\":{\"content\":[{\"type\":\"text\",\"text\":\"t\"}]}}\n"),
            }
        }
        let (out, peak) = read_bounded(&s, 16 << 10);
        assert!(peak < 4 << 10);
        assert_eq!(out.api_retries, 50_000);
        assert_eq!(out.last_assistant_text.as_deref(), Some("t"));
    }

    /// Lines after the first result still update the last assistant text.
    #[test]
    fn after_the_result() {
        let mut s = fixture("success-text.stdout.jsonl");
        s.extend_from_slice(b"{\"type\":\"assistant\",\"message\":{\"content\":[{\"type\":\"text\",\"text\":\"later\"}]}}\n");
        s.extend_from_slice(
            b"{\"type\":\"system\",\"subtype\":\"init\",\"claude_code_version\":\"9\"}\n",
        );
        s.extend_from_slice(b"not json\n");
        let out = read_all(&s);
        assert_eq!(out.last_assistant_text.as_deref(), Some("later"));
        assert_eq!(
            out.init.unwrap().claude_code_version.as_deref(),
            Some("2.1.197")
        );
        assert_eq!(out.ignored_lines, 1);
    }

    /// Realistic stream-json: assistant text and tool calls, tool results
    /// (a few of 100 KB), retries.
    fn bench_stream(total: usize) -> Vec<u8> {
        let mut rng = Rng(99);
        let sid = "0969badc-b6e3-44a3-a84d-d989f5d87e99";
        let words = "the quick brown fox jumps over the lazy dog, \"quoted\" \\ and é ü 😀 ";
        let mut s = fixture("success-text.stdout.jsonl");
        s.truncate(s.iter().position(|&b| b == b'\n').unwrap() + 1);
        let mut n = 0u64;
        while s.len() < total {
            n += 1;
            let len = 500 + rng.below(4000);
            let text: String = words
                .chars()
                .cycle()
                .skip(rng.below(20))
                .take(len)
                .collect();
            let line = match rng.below(10) {
                0..=3 => {
                    serde_json::json!({"type":"assistant","message":{"id":format!("msg_{n}"),"type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":text}],"stop_reason":null,"usage":{"input_tokens":10,"output_tokens":1}},"parent_tool_use_id":null,"session_id":sid,"uuid":format!("u{n}")})
                }
                4..=5 => {
                    serde_json::json!({"type":"assistant","message":{"id":format!("msg_{n}"),"type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"tool_use","id":format!("toolu_{n}"),"name":"Write","input":{"file_path":"/srv/vault/a.md","content":text}}],"usage":{"input_tokens":10,"output_tokens":1}},"session_id":sid,"uuid":format!("u{n}")})
                }
                6..=8 => {
                    let content = if rng.below(20) == 0 {
                        words.repeat(100_000 / words.len())
                    } else {
                        text
                    };
                    serde_json::json!({"type":"user","message":{"role":"user","content":[{"tool_use_id":format!("toolu_{n}"),"type":"tool_result","content":content}]},"session_id":sid,"uuid":format!("u{n}"),"tool_use_result":{"stdout":"ok","stderr":""}})
                }
                _ => {
                    serde_json::json!({"type":"system","subtype":"api_retry","attempt":1,"max_retries":10,"retry_delay_ms":515.18,"error_status":529,"error":"overloaded","session_id":sid,"uuid":format!("u{n}")})
                }
            };
            s.extend_from_slice(line.to_string().as_bytes());
            s.push(b'\n');
        }
        s.extend_from_slice(&result_line_with("\"done\""));
        s
    }

    /// ~100 MiB of realistic stream-json through `push`, in MiB/s.
    #[test]
    #[ignore = "benchmark: cargo test --release -- --ignored --nocapture"]
    fn bench_push() {
        let data = bench_stream(100 << 20);
        if let Ok(path) = std::env::var("STREAM_BENCH_OUT") {
            std::fs::write(path, &data).unwrap();
        }
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = std::time::Instant::now();
            let mut r = StreamReader::new();
            let mut fired = false;
            for c in data.chunks(64 << 10) {
                fired |= r.push(c);
            }
            let out = r.finish();
            let secs = t.elapsed().as_secs_f64();
            assert!(fired && out.ignored_lines == 0);
            assert_eq!(out.result.unwrap().result.as_deref(), Some("done"));
            best = best.min(secs);
        }
        let mb = data.len() as f64 / (1 << 20) as f64;
        println!(
            "stream bench: {mb:.0} MiB in {:.3} s = {:.0} MiB/s",
            best,
            mb / best
        );
    }
}
