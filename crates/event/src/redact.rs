//! Bounding and redacting command lines before they leave the machine.

/// Command lines are cut to this many bytes (all arguments together).
pub const MAX_ARGV_BYTES: usize = 16 * 1024;
/// What a redacted value is replaced with.
pub const REDACTED: &str = "[REDACTED]";
/// The last argument of a cut command line.
pub const TRUNCATED: &str = "[TRUNCATED]";

const SECRET_WORDS: &[&str] = &[
    "token",
    "secret",
    "password",
    "passwd",
    "apikey",
    "api_key",
    "api-key",
    "auth",
    "credential",
    "private_key",
    "private-key",
    "access_key",
    "access-key",
];

const SECRET_PREFIXES: &[&str] = &[
    "sk-",
    "sk_live_",
    "ghp_",
    "gho_",
    "ghs_",
    "github_pat_",
    "xoxb-",
    "xoxp-",
    "AKIA",
    "glpat-",
    "AIza",
];

fn names_secret(key: &str) -> bool {
    let k = key.trim_start_matches('-').to_ascii_lowercase();
    SECRET_WORDS.iter().any(|w| k.contains(w))
}

fn looks_like_secret(value: &str) -> bool {
    value.len() >= 16
        && SECRET_PREFIXES.iter().any(|p| value.starts_with(p))
        && !value.contains(char::is_whitespace)
}

/// Redact values that look like secrets: the value after `--api-key`/`--token`/... , the value of
/// `--api-key=X` and `TOKEN=X`, `Authorization: Bearer X`, and well-known key formats
/// (`sk-...`, `ghp_...`, `AKIA...`).
pub fn redact_argv(argv: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(argv.len());
    let mut redact_next = false;
    for a in argv {
        if redact_next {
            out.push(REDACTED.to_string());
            redact_next = false;
            continue;
        }
        if let Some((k, _)) = a.split_once('=') {
            if names_secret(k) {
                out.push(format!("{k}={REDACTED}"));
                continue;
            }
        }
        let lower = a.to_ascii_lowercase();
        if let Some(i) = lower.find("bearer ") {
            out.push(format!("{}{REDACTED}", &a[..i + 7]));
            continue;
        }
        if a.starts_with('-') && names_secret(a) {
            out.push(a.clone());
            redact_next = true;
            continue;
        }
        if looks_like_secret(a) {
            out.push(REDACTED.to_string());
            continue;
        }
        out.push(a.clone());
    }
    out
}

/// Keep at most [`MAX_ARGV_BYTES`] of arguments; a cut command line ends with [`TRUNCATED`].
/// Returns the arguments and whether anything was cut.
pub fn bound_argv(argv: Vec<String>) -> (Vec<String>, bool) {
    bound_argv_to(argv, MAX_ARGV_BYTES)
}

/// Keep at most `max` bytes of arguments (cut on a character boundary); a cut command line ends
/// with [`TRUNCATED`], which is not counted. Returns the arguments and whether anything was cut.
pub fn bound_argv_to(argv: Vec<String>, max: usize) -> (Vec<String>, bool) {
    let mut total = 0;
    let mut out = Vec::new();
    for a in argv {
        if total + a.len() > max {
            let room = max.saturating_sub(total);
            if room > 0 {
                let mut cut = room;
                while !a.is_char_boundary(cut) {
                    cut -= 1;
                }
                out.push(a[..cut].to_string());
            }
            out.push(TRUNCATED.to_string());
            return (out, true);
        }
        total += a.len();
        out.push(a);
    }
    (out, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn redacts_secret_flags_and_env_style_values() {
        let got = redact_argv(&v(&[
            "claude",
            "--api-key",
            "abc",
            "--token=xyz",
            "ANTHROPIC_API_KEY=sk-ant-123",
            "-H",
            "Authorization: Bearer eyJhbGciOi",
            "ghp_0123456789abcdefghij",
            "--model",
            "opus",
        ]));
        assert_eq!(
            got,
            v(&[
                "claude",
                "--api-key",
                REDACTED,
                "--token=[REDACTED]",
                "ANTHROPIC_API_KEY=[REDACTED]",
                "-H",
                "Authorization: Bearer [REDACTED]",
                REDACTED,
                "--model",
                "opus",
            ])
        );
    }

    #[test]
    fn bounds_long_command_lines_with_a_mark() {
        let long = vec!["x".repeat(10_000), "y".repeat(10_000), "z".into()];
        let (out, cut) = bound_argv(long);
        assert!(cut);
        assert_eq!(out.last().unwrap(), TRUNCATED);
        let bytes: usize = out[..out.len() - 1].iter().map(|s| s.len()).sum();
        assert_eq!(bytes, MAX_ARGV_BYTES);
        let (out, cut) = bound_argv(v(&["a", "b"]));
        assert!(!cut);
        assert_eq!(out, v(&["a", "b"]));
    }

    #[test]
    fn cuts_on_a_char_boundary() {
        let (out, _) = bound_argv(vec!["é".repeat(MAX_ARGV_BYTES)]);
        assert!(out[0].len() <= MAX_ARGV_BYTES);
    }
}
