//! Reading TOML tables by hand, with spans: every unknown key, wrong type and bad value becomes a
//! located [`Diagnostic`], and reading goes on so that every problem is reported at once. Used for
//! policies and for the agent's configuration file.

use std::ops::Range;

use toml::de::DeValue;
use toml::Spanned;

use crate::diag::{Code, Diagnostic, Diagnostics, Severity, SourceText};
use crate::model::Date;

/// A spanned TOML value, as produced by [`toml::de::DeTable::parse`].
pub type Value<'i> = Spanned<DeValue<'i>>;

/// The TOML type of a value, for messages ("a string", "an array", ...).
pub fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// Collects diagnostics while reading the fields of one file.
#[derive(Debug)]
pub struct Fields<'s> {
    src: &'s SourceText<'s>,
    diags: Vec<Diagnostic>,
}

impl<'s> Fields<'s> {
    /// Start reading `src`.
    pub fn new(src: &'s SourceText<'s>) -> Fields<'s> {
        Fields {
            src,
            diags: Vec::new(),
        }
    }

    /// The file being read.
    pub fn src(&self) -> &'s SourceText<'s> {
        self.src
    }

    /// Add diagnostics found elsewhere (e.g. in an included file).
    pub fn extend(&mut self, diags: impl IntoIterator<Item = Diagnostic>) {
        self.diags.extend(diags);
    }

    /// Everything found so far, sorted by position.
    pub fn finish(self) -> Diagnostics {
        let mut d = Diagnostics(self.diags);
        d.sort();
        d
    }

    /// A non-negative integer no larger than `max`, or an error.
    pub fn integer(&mut self, key: &str, v: &Value<'_>, max: u64) -> Option<u64> {
        let DeValue::Integer(i) = v.get_ref() else {
            self.wrong_type(key, "an integer", v);
            return None;
        };
        let text = i.as_str().replace('_', "");
        let digits = text
            .trim_start_matches("0x")
            .trim_start_matches("0o")
            .trim_start_matches("0b");
        match u64::from_str_radix(if i.radix() == 10 { &text } else { digits }, i.radix()) {
            Ok(n) if n <= max => Some(n),
            _ => {
                self.err(
                    Code::BadValue,
                    v.span(),
                    format!("`{key}` must be an integer from 0 to {max}"),
                );
                None
            }
        }
    }

    /// Parse `text` as a TOML document; syntax errors are recorded and `None` returned.
    pub fn parse_document<'i>(&mut self, text: &'i str) -> Option<toml::de::DeTable<'i>> {
        let (root, syntax) = toml::de::DeTable::parse_recoverable(text);
        if syntax.is_empty() {
            return Some(root.into_inner());
        }
        for e in syntax {
            let span = e.span().unwrap_or(0..0);
            let msg = e.message().trim().replace('\n', " ");
            self.err(Code::TomlSyntax, span, msg);
        }
        None
    }

    /// Record an error at `span`.
    pub fn err(&mut self, code: Code, span: Range<usize>, msg: impl Into<String>) {
        let d = self.src.diag(Severity::Error, code, span, msg);
        self.diags.push(d);
    }

    /// Record a warning at `span`.
    pub fn warn(&mut self, code: Code, span: Range<usize>, msg: impl Into<String>) {
        let d = self.src.diag(Severity::Warning, code, span, msg);
        self.diags.push(d);
    }

    /// Record a `wrong-type` error: `key` must be `want`.
    pub fn wrong_type(&mut self, key: &str, want: &str, v: &Value<'_>) {
        self.err(
            Code::WrongType,
            v.span(),
            format!("`{key}` must be {want}, found {}", type_name(v.get_ref())),
        );
    }

    /// Record an `unknown-key` error with a "did you mean" hint from `known`.
    pub fn unknown_key(
        &mut self,
        table: &str,
        key: &Spanned<std::borrow::Cow<'_, str>>,
        known: &[&str],
    ) {
        let name = key.get_ref();
        let hint = suggest(name, known)
            .map(|s| format!("; did you mean `{s}`?"))
            .unwrap_or_default();
        self.err(
            Code::UnknownKey,
            key.span(),
            format!(
                "unknown key `{name}` in {table} (expected one of: {}){hint}",
                known.join(", ")
            ),
        );
    }

    /// A non-empty string, or an error.
    pub fn string(&mut self, key: &str, v: &Value<'_>) -> Option<(String, Range<usize>)> {
        match v.get_ref() {
            DeValue::String(s) => {
                if s.trim().is_empty() {
                    self.err(
                        Code::EmptyValue,
                        v.span(),
                        format!("`{key}` must not be empty"),
                    );
                    None
                } else {
                    Some((s.to_string(), v.span()))
                }
            }
            _ => {
                self.wrong_type(key, "a string", v);
                None
            }
        }
    }

    /// An array of non-empty strings with their spans; errors for anything else.
    pub fn string_list(&mut self, key: &str, v: &Value<'_>) -> Vec<(String, Range<usize>)> {
        match v.get_ref() {
            DeValue::Array(items) => {
                let mut out = Vec::new();
                for item in items.iter() {
                    match item.get_ref() {
                        DeValue::String(s) if s.trim().is_empty() => self.err(
                            Code::EmptyValue,
                            item.span(),
                            format!("`{key}` must not contain empty strings"),
                        ),
                        DeValue::String(s) => out.push((s.to_string(), item.span())),
                        _ => self.wrong_type(key, "an array of strings", item),
                    }
                }
                out
            }
            _ => {
                self.wrong_type(key, "an array of strings", v);
                Vec::new()
            }
        }
    }

    /// A boolean, or an error.
    pub fn boolean(&mut self, key: &str, v: &Value<'_>) -> Option<bool> {
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.wrong_type(key, "true or false", v);
                None
            }
        }
    }

    /// A string that must parse as `T` (one of `keywords`); `code` on failure.
    pub fn keyword<T: std::str::FromStr>(
        &mut self,
        key: &str,
        v: &Value<'_>,
        code: Code,
        keywords: &[&str],
    ) -> Option<T> {
        let (s, span) = self.string(key, v)?;
        match s.parse::<T>() {
            Ok(t) => Some(t),
            Err(_) => {
                let hint = suggest(&s, keywords)
                    .map(|k| format!("; did you mean `{k}`?"))
                    .unwrap_or_default();
                self.err(
                    code,
                    span,
                    format!(
                        "`{key}` is `{s}`, expected one of: {}{hint}",
                        keywords.join(", ")
                    ),
                );
                None
            }
        }
    }

    /// A bare TOML date, or a `bad-date` error.
    pub fn date(&mut self, key: &str, v: &Value<'_>) -> Option<Date> {
        match v.get_ref() {
            DeValue::Datetime(dt) => match (dt.date, dt.time, dt.offset) {
                (Some(d), None, None) => {
                    let date = Date::new(d.year, d.month, d.day);
                    if date.is_none() {
                        self.err(
                            Code::BadDate,
                            v.span(),
                            format!("`{key}` is {d}, which is not a day of the calendar"),
                        );
                    }
                    date
                }
                _ => {
                    self.err(
                        Code::BadDate,
                        v.span(),
                        format!("`{key}` must be a plain date like 2026-12-01, without a time"),
                    );
                    None
                }
            },
            DeValue::String(s) => {
                self.err(
                    Code::BadDate,
                    v.span(),
                    format!("`{key}` must be a bare TOML date like 2026-12-01, not the string \"{s}\" (drop the quotes)"),
                );
                None
            }
            other => {
                self.err(
                    Code::BadDate,
                    v.span(),
                    format!(
                        "`{key}` must be a date like 2026-12-01, found {}",
                        type_name(other)
                    ),
                );
                None
            }
        }
    }
}

/// The known word closest to `word` (edit distance at most 2), for "did you mean" hints.
pub(crate) fn suggest<'k>(word: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (edit_distance(word, k), *k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(suggest("nmes", &["names", "paths"]), Some("names"));
        assert_eq!(suggest("zzzzzz", &["names", "paths"]), None);
    }

    #[test]
    fn integers_in_range() {
        let src = SourceText::new("c.toml", "a = 1_000\nb = -1\nc = 0x10\nd = \"5\"\n");
        let mut f = Fields::new(&src);
        let t = f.parse_document(src.text()).unwrap();
        let get = |k: &str| {
            t.iter()
                .find(|(key, _)| key.get_ref() == k)
                .unwrap()
                .1
                .clone()
        };
        assert_eq!(f.integer("a", &get("a"), 5000), Some(1000));
        assert_eq!(f.integer("b", &get("b"), 5000), None);
        assert_eq!(f.integer("c", &get("c"), 5000), Some(16));
        assert_eq!(f.integer("d", &get("d"), 5000), None);
        let d = f.finish();
        let codes: Vec<_> = d.0.iter().map(|d| d.code.as_str()).collect();
        assert_eq!(codes, ["bad-value", "wrong-type"]);
    }
}
