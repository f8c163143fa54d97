//! Exports of the current filter: NDJSON (the events as the agents sent them, as the API gives
//! them), CSV (one row per event; cells a spreadsheet would run as a formula are quoted off),
//! OCSF and ECS (the same `to_ocsf` / `to_ecs` as the API).

use interdict_event::Event;

/// The export formats: (query value, file extension, content type).
pub const FORMATS: &[(&str, &str, &str)] = &[
    ("ndjson", "ndjson", "application/x-ndjson"),
    ("csv", "csv", "text/csv; charset=utf-8"),
    ("ocsf", "ocsf.ndjson", "application/x-ndjson"),
    ("ecs", "ecs.ndjson", "application/x-ndjson"),
];

/// The CSV columns, in order.
pub const CSV_COLUMNS: &[&str] = &[
    "time",
    "host_id",
    "hostname",
    "kind",
    "outcome",
    "rule_id",
    "rule_name",
    "risk",
    "action",
    "selector",
    "pattern",
    "matched",
    "user",
    "uid",
    "pid",
    "ppid",
    "exe",
    "argv",
    "cwd",
    "parent_exe",
    "file_path",
    "file_sha256",
    "file_size",
    "policy_name",
    "policy_version",
    "policy_sha256",
    "mode",
    "sensor",
    "message",
    "seq",
    "prev_hash",
    "id",
];

/// One CSV cell: quoted when it holds a comma, a quote or a line break (RFC 4180), and with a
/// leading `'` when it starts with `=`, `+`, `-`, `@`, a tab or a carriage return, which
/// spreadsheets would otherwise run as a formula (OWASP's "CSV injection").
pub fn csv_cell(v: &str) -> String {
    let v = if v.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{v}")
    } else {
        v.to_string()
    };
    if v.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v
    }
}

/// The header line (with CRLF).
pub fn csv_header() -> String {
    let mut s = CSV_COLUMNS.join(",");
    s.push_str("\r\n");
    s
}

fn snake<T: serde::Serialize>(v: &T) -> String {
    interdict_event::snake(v)
}

/// One event as a CSV line (with CRLF); `None` when the stored bytes are not an event.
pub fn csv_line(raw: &str) -> Option<String> {
    let e: Event = serde_json::from_str(raw).ok()?;
    let r = e.rule.as_ref();
    let p = e.process.as_ref();
    let f = e.file.as_ref();
    let pol = e.policy.as_ref();
    let opt = |o: Option<String>| o.unwrap_or_default();
    let cells: Vec<String> = vec![
        e.time.clone(),
        e.host_id.clone(),
        e.hostname.clone(),
        snake(&e.kind),
        opt(e.outcome.as_ref().map(snake)),
        opt(r.map(|r| r.id.clone())),
        opt(r.map(|r| r.name.clone())),
        opt(r.map(|r| r.risk.clone())),
        opt(r.map(|r| r.action.clone())),
        opt(r.map(|r| r.selector.clone())),
        opt(r.map(|r| r.pattern.clone())),
        opt(r.map(|r| r.matched.clone())),
        opt(p.and_then(|p| p.user.clone())),
        opt(p.and_then(|p| p.uid).map(|u| u.to_string())),
        opt(p.map(|p| p.pid.to_string())),
        opt(p.and_then(|p| p.ppid).map(|u| u.to_string())),
        opt(p.and_then(|p| p.exe.clone())),
        opt(p
            .filter(|p| !p.argv.is_empty())
            .map(|p| serde_json::to_string(&p.argv).unwrap_or_default())),
        opt(p.and_then(|p| p.cwd.clone())),
        opt(p.and_then(|p| p.parent_exe.clone())),
        opt(f.map(|f| f.path.clone())),
        opt(f.and_then(|f| f.sha256.clone())),
        opt(f.and_then(|f| f.size).map(|s| s.to_string())),
        opt(pol.map(|p| p.name.clone())),
        opt(pol.map(|p| p.version.clone())),
        opt(pol.map(|p| p.sha256.clone())),
        opt(pol.map(|p| p.mode.clone())),
        opt(e.sensor.clone()),
        opt(e.message.clone()),
        opt(e.seq.map(|s| s.to_string())),
        opt(e.prev_hash.clone()),
        e.id.clone(),
    ];
    let mut s = cells
        .iter()
        .map(|c| csv_cell(c))
        .collect::<Vec<_>>()
        .join(",");
    s.push_str("\r\n");
    Some(s)
}

/// One event in `format` (a line with its newline), as the API writes it; `None` when the
/// stored bytes are not an event (native NDJSON passes them on as they are).
pub fn line(format: &str, raw: &str) -> Option<String> {
    match format {
        "csv" => csv_line(raw),
        "ocsf" | "ecs" => {
            let e: Event = serde_json::from_str(raw).ok()?;
            let v = if format == "ocsf" {
                interdict_event::ocsf::to_ocsf(&e)
            } else {
                interdict_event::ecs::to_ecs(&e)
            };
            Some(format!("{v}\n"))
        }
        _ => Some(format!("{raw}\n")),
    }
}

/// A response body fed by a channel: chunks made on a blocking thread, sent as they come. When
/// the client goes away the receiver is dropped and the producer stops at its next send; the
/// channel holds at most its capacity of chunks, so a slow client slows the producer down.
pub struct ChannelBody(pub tokio::sync::mpsc::Receiver<bytes::Bytes>);

impl http_body::Body for ChannelBody {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|c| c.map(|b| Ok(http_body::Frame::data(b))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_cells_are_quoted_off_and_specials_are_quoted() {
        assert_eq!(csv_cell("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_cell("+1"), "'+1");
        assert_eq!(csv_cell("-i"), "'-i");
        assert_eq!(csv_cell("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(csv_cell("\tx"), "'\tx");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("line\nbreak"), "\"line\nbreak\"");
        assert_eq!(csv_cell("plain"), "plain");
        assert_eq!(csv_cell(""), "");
    }
}
