//! A tiny MCP server on stdio, named `lab` in the tests' MCP configs, for
//! driving the real `claude` CLI: it offers two tools, `query` (`{q}`) and
//! `delete` (`{id}`), so a test can allow one and prove the other is denied.
//!
//! ```text
//! MCP_LAB_LOG=/tmp/calls.log target/debug/examples/mcp_lab
//! ```
//!
//! Newline-delimited JSON-RPC 2.0 on stdin/stdout (the MCP stdio transport).
//! `initialize` is answered with the client's own `protocolVersion` and a
//! `tools` capability; `tools/list` with the two tools; `tools/call` with a
//! text result saying what was done and, when `MCP_LAB_LOG` is set, one line
//! `<tool> <arguments as JSON>` appended to that file per call, so a test can
//! tell whether a tool really ran. `ping` answers `{}`. Notifications (no
//! `id`) get no answer; other methods get JSON-RPC errors. Nothing is printed
//! on stderr unless a log line cannot be written. Ends at end of input.
//!
//! Left out: resources, prompts, batches, cancellation, pagination.

use std::io::{self, BufRead, Write};
use std::process::ExitCode;

use serde_json::{Value, json};

fn main() -> ExitCode {
    let log = std::env::var_os("MCP_LAB_LOG");
    let stdin = io::stdin();
    let mut stdout = io::stdout().lock();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        let Some(answer) = answer(&line, log.as_deref().map(std::path::Path::new)) else {
            continue;
        };
        if writeln!(stdout, "{answer}")
            .and_then(|()| stdout.flush())
            .is_err()
        {
            // The client went away.
            break;
        }
    }
    ExitCode::SUCCESS
}

/// The reply to one message, or `None` for a notification.
fn answer(line: &str, log: Option<&std::path::Path>) -> Option<Value> {
    let message: Value = match serde_json::from_str(line) {
        Ok(message) => message,
        Err(e) => return Some(error(Value::Null, -32700, &format!("parse error: {e}"))),
    };
    // A response to us (we send no requests) or a notification: no answer.
    let id = message.get("id").cloned()?;
    let method = message.get("method").and_then(Value::as_str)?;
    let params = message.get("params").cloned().unwrap_or(Value::Null);
    let result = match method {
        "initialize" => {
            let version = params
                .get("protocolVersion")
                .and_then(Value::as_str)
                .unwrap_or("2025-06-18");
            json!({
                "protocolVersion": version,
                "capabilities": { "tools": { "listChanged": false } },
                "serverInfo": { "name": "mcp_lab", "version": env!("CARGO_PKG_VERSION") },
            })
        }
        "ping" => json!({}),
        "tools/list" => json!({ "tools": [
            {
                "name": "query",
                "description": "Look something up in the lab (read-only).",
                "inputSchema": {
                    "type": "object",
                    "properties": { "q": { "type": "string", "description": "what to look up" } },
                    "required": ["q"],
                },
            },
            {
                "name": "delete",
                "description": "Delete a lab record (destructive).",
                "inputSchema": {
                    "type": "object",
                    "properties": { "id": { "type": "string", "description": "the record to delete" } },
                    "required": ["id"],
                },
            },
        ]}),
        "tools/call" => {
            let name = params.get("name").and_then(Value::as_str).unwrap_or("");
            let arguments = params.get("arguments").cloned().unwrap_or(json!({}));
            let text = match name {
                "query" => format!(
                    "lab result for {}",
                    arguments.get("q").and_then(Value::as_str).unwrap_or("?")
                ),
                "delete" => format!(
                    "deleted {}",
                    arguments.get("id").and_then(Value::as_str).unwrap_or("?")
                ),
                _ => return Some(error(id, -32602, &format!("unknown tool: {name}"))),
            };
            if let Some(path) = log {
                record(path, name, &arguments);
            }
            json!({ "content": [{ "type": "text", "text": text }], "isError": false })
        }
        _ => return Some(error(id, -32601, &format!("method not found: {method}"))),
    };
    Some(json!({ "jsonrpc": "2.0", "id": id, "result": result }))
}

/// Appends `<tool> <arguments>` to the log in one write, so lines of
/// concurrent calls do not mix.
fn record(path: &std::path::Path, tool: &str, arguments: &Value) {
    let line = format!("{tool} {arguments}\n");
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut file| file.write_all(line.as_bytes()));
    if let Err(e) = written {
        eprintln!("mcp_lab: cannot log to {}: {e}", path.display());
    }
}

fn error(id: Value, code: i64, message: &str) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": message } })
}
