//! Rendering for people and machines: `--json` writes one JSON document per command on stdout,
//! otherwise tables (left-aligned columns, two spaces apart) and lines. Pure formatting helpers
//! the command groups share live here too; nothing here reads or writes state.

use std::io::Write;

use serde::Serialize;

use super::CliError;
use codexmesh_model::routing::RoutingView;
use codexmesh_model::util;
use codexmesh_store::Account;

pub struct Output {
    pub json: bool,
}

impl Output {
    pub fn json<T: Serialize>(&self, value: &T) -> Result<(), CliError> {
        let s = serde_json::to_string(value).map_err(|e| CliError::Output(e.to_string()))?;
        self.line(&s)
    }

    pub fn line(&self, s: &str) -> Result<(), CliError> {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{s}")
            .and_then(|()| stdout.flush())
            .map_err(|e| CliError::Output(e.to_string()))
    }

    pub fn table(&self, headers: &[&str], rows: &[Vec<String>]) -> Result<(), CliError> {
        self.line(render_table(headers, rows).trim_end())
    }
}

/// Left-aligned columns two spaces apart, no borders, no trailing spaces.
pub fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut table = comfy_table::Table::new();
    table
        .load_preset(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Disabled)
        .set_header(headers.iter().copied())
        .add_rows(rows.iter().map(|r| r.iter().map(String::as_str)));
    let last = headers.len().saturating_sub(1);
    for (i, column) in table.column_iter_mut().enumerate() {
        column.set_padding((0, if i == last { 0 } else { 2 }));
    }
    let mut s = table.trim_fmt();
    s.push('\n');
    s
}

/// The value or "-".
pub fn opt(s: &Option<String>) -> String {
    s.clone().unwrap_or_else(|| "-".to_owned())
}

/// "in 3h 2m", "expired 5m ago" or "unknown".
pub fn expires_in(a: &Account, now: i64) -> String {
    a.access_token_expires_at_ms
        .map_or_else(|| "unknown".to_owned(), |t| util::human_until(t, now))
}

/// Routing settings as indented "name  value" lines for people.
pub fn routing_text(v: &RoutingView) -> String {
    let rows = [
        ("strategy", v.strategy.to_string()),
        ("max attempts", v.max_attempts.to_string()),
        ("explain routes", v.explain_routes.to_string()),
        (
            "websockets",
            if v.websockets { "on" } else { "off" }.to_owned(),
        ),
        (
            "primary account",
            v.primary_account_id
                .clone()
                .unwrap_or_else(|| "- (first by priority)".to_owned()),
        ),
        (
            "5-hour threshold",
            format!("{}%", v.primary_threshold_percent),
        ),
        (
            "weekly threshold",
            format!("{}%", v.secondary_threshold_percent),
        ),
        ("circuit failures", v.circuit_failures.to_string()),
        ("circuit open", format!("{} ms", v.circuit_open_ms)),
        ("cooldown max", format!("{} ms", v.cooldown_max_ms)),
    ];
    rows.iter()
        .map(|(k, v)| format!("  {k:<17} {v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// "changed", "unchanged" or nothing (nothing was asked to change).
pub fn change_suffix(requested: bool, changed: bool) -> &'static str {
    match (requested, changed) {
        (false, _) => "",
        (true, true) => " (changed)",
        (true, false) => " (unchanged)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_alignment() {
        let t = render_table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y\n");
        // Empty cells, a row wider than the header, a short row, no rows.
        let t = render_table(
            &["ID", "NAME", "NOTE"],
            &[
                vec!["1".into(), String::new(), "long note".into()],
                vec!["22".into(), "b".into()],
            ],
        );
        assert_eq!(t, "ID  NAME  NOTE\n1         long note\n22  b\n");
        assert_eq!(render_table(&["A", "B"], &[]), "A  B\n");
    }
}
