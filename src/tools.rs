//! Which tools an agent may use (SPEC §6.2): the permission modes of
//! `claude -p`, and the built-in tools a job's `allowed_tools` names.
//!
//! Only `dontAsk` makes `allowed_tools` a real allowlist: anything not
//! listed is denied without a prompt. Under `bypassPermissions` the CLI
//! runs every tool whatever `--allowedTools` says, so the runner says so
//! wherever that mode is chosen. Pure; the argv is `agent`'s.

use std::fmt;

/// `--permission-mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PermissionMode {
    /// Anything not in `allowed_tools` is denied (the default).
    #[default]
    DontAsk,
    Default,
    AcceptEdits,
    Plan,
    /// Every tool runs: `allowed_tools` is not enforced.
    BypassPermissions,
}

impl PermissionMode {
    pub const ALL: [PermissionMode; 5] = [
        PermissionMode::DontAsk,
        PermissionMode::Default,
        PermissionMode::AcceptEdits,
        PermissionMode::Plan,
        PermissionMode::BypassPermissions,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PermissionMode::DontAsk => "dontAsk",
            PermissionMode::Default => "default",
            PermissionMode::AcceptEdits => "acceptEdits",
            PermissionMode::Plan => "plan",
            PermissionMode::BypassPermissions => "bypassPermissions",
        }
    }

    /// The mode named `text` (exactly as the CLI spells it).
    pub fn parse(text: &str) -> Result<PermissionMode, String> {
        let t = text.trim();
        PermissionMode::ALL
            .into_iter()
            .find(|m| m.as_str() == t)
            .ok_or_else(|| {
                let names: Vec<&str> = PermissionMode::ALL.iter().map(|m| m.as_str()).collect();
                format!("expected one of {} (got {t:?})", names.join(", "))
            })
    }

    /// Whether `allowed_tools` restricts anything in this mode.
    pub fn enforces_allowed_tools(self) -> bool {
        self != PermissionMode::BypassPermissions
    }
}

impl fmt::Display for PermissionMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The warning for a job whose mode does not enforce its tools.
pub fn bypass_warning(job_path: &str) -> String {
    format!(
        "{job_path}: permission_mode bypassPermissions: allowed_tools is not enforced, the agent may run any tool (Bash included)"
    )
}

/// The built-in tools `allowed_tools` names, for `--tools`: every name
/// not starting with `mcp__`, a `(pattern)` suffix removed, each once, in
/// order. Empty when there are none (then no built-in tool is offered).
pub fn builtin_tools(allowed: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for tool in allowed {
        let tool = tool.trim();
        if tool.starts_with("mcp__") {
            continue;
        }
        let name = tool.split_once('(').map_or(tool, |(name, _)| name).trim();
        if !name.is_empty() && !out.iter().any(|t| t == name) {
            out.push(name.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_round_trip_and_bad_ones_list_the_good_ones() {
        for m in PermissionMode::ALL {
            assert_eq!(PermissionMode::parse(m.as_str()), Ok(m));
        }
        assert_eq!(PermissionMode::default(), PermissionMode::DontAsk);
        assert_eq!(
            PermissionMode::parse("yolo").unwrap_err(),
            "expected one of dontAsk, default, acceptEdits, plan, bypassPermissions (got \"yolo\")"
        );
        assert!(!PermissionMode::BypassPermissions.enforces_allowed_tools());
        assert!(PermissionMode::DontAsk.enforces_allowed_tools());
    }

    #[test]
    fn builtin_tools_of_allowed_tools() {
        let t =
            |list: &[&str]| builtin_tools(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            t(&[
                "Read",
                "Bash(git log:*)",
                "mcp__vault__search",
                "Bash(ls)",
                " Grep "
            ]),
            ["Read", "Bash", "Grep"]
        );
        assert!(t(&["mcp__parachute-vault-default__search"]).is_empty());
        assert!(t(&[]).is_empty());
    }
}
