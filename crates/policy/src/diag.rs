//! Diagnostics: every problem found in a policy, located as `FILE:LINE:COL` under a stable code.

use std::fmt;
use std::ops::Range;

/// How serious a diagnostic is. Any [`Severity::Error`] rejects the whole policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The policy is rejected.
    Error,
    /// The policy is accepted, but probably not what the author meant.
    Warning,
}

macro_rules! codes {
    ($($(#[$doc:meta])* $variant:ident => $text:literal,)*) => {
        /// The stable, kebab-case code of a diagnostic. Codes never change meaning once released;
        /// scripts and documentation may rely on them.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Code {
            $($(#[$doc])* $variant,)*
        }

        impl Code {
            /// Every code, in declaration order.
            pub const ALL: &'static [Code] = &[$(Code::$variant,)*];

            /// The kebab-case text of the code, as printed in `error[CODE]`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Code::$variant => $text,)*
                }
            }
        }
    };
}

codes! {
    /// The file is not valid TOML.
    TomlSyntax => "toml-syntax",
    /// A key that the policy language does not know (often a typo).
    UnknownKey => "unknown-key",
    /// A required key is missing.
    MissingKey => "missing-key",
    /// A value has the wrong TOML type (a string where a list is expected, ...).
    WrongType => "wrong-type",
    /// `mode` is not `enforce` or `monitor`.
    BadMode => "bad-mode",
    /// `action` is not one of block, kill, quarantine, report, allow.
    BadAction => "bad-action",
    /// `risk` is not one of low, medium, high, critical.
    BadRisk => "bad-risk",
    /// A rule id that is not kebab-case.
    BadRuleId => "bad-rule-id",
    /// Two rules with the same id.
    DuplicateRuleId => "duplicate-rule-id",
    /// A rule with no selector in `[rule.match]`.
    RuleWithoutSelector => "rule-without-selector",
    /// A glob that does not compile.
    BadGlob => "bad-glob",
    /// A SHA-256 that is not 64 hexadecimal digits, or a bad line in a sha256 file.
    BadSha256 => "bad-sha256",
    /// A `sha256_files` entry that cannot be read.
    MissingSha256File => "missing-sha256-file",
    /// A package marker that is not `ecosystem:name` with a known ecosystem.
    BadPackage => "bad-package",
    /// `enforce_from` is not a plain TOML date.
    BadDate => "bad-date",
    /// An unknown `%placeholder%` in `message` or `more_info_url`.
    BadPlaceholder => "bad-placeholder",
    /// A value out of range or otherwise unacceptable (configuration files).
    BadValue => "bad-value",
    /// An empty string where a value is required.
    EmptyValue => "empty-value",
    /// A policy without any rule (refused: an empty policy is never what an admin meant).
    NoRules => "no-rules",
    /// A public key that is not 64 hexadecimal digits (`exception_keys`, `hash_list_keys`).
    BadPublicKey => "bad-public-key",
    /// A `contains_all` signature that cannot be read, or is too short or too long.
    BadSignature => "bad-signature",
    /// A `contains_in` entry that is not elf, mach-o, pe or script.
    BadFileFormat => "bad-file-format",
    /// A rule that matches only configuration files with an action other than `report`:
    /// configuration files are reported, never blocked, killed or quarantined.
    ConfigAction => "config-action",
    /// Warning: a block, kill or quarantine rule that matches on names alone.
    NameOnlyBlock => "name-only-block",
    /// Warning: a rule that would block the system's own critical binaries.
    BlocksCriticalBinary => "blocks-critical-binary",
    /// Warning: a name selector containing a path separator, which can never match a basename.
    NameWithSlash => "name-with-slash",
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem, located in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// Stable kebab-case code.
    pub code: Code,
    /// What is wrong, in plain words.
    pub message: String,
    /// The file as the user named it.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub col: usize,
}

impl fmt::Display for Diagnostic {
    /// `FILE:LINE:COL: error[code]: message`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}:{}: {}[{}]: {}",
            self.file, self.line, self.col, sev, self.code, self.message
        )
    }
}

/// Turns byte offsets of one text into 1-based line and column numbers.
#[derive(Debug, Clone)]
pub struct SourceText<'a> {
    name: &'a str,
    text: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> SourceText<'a> {
    /// Index `text`, shown to the user as `name`.
    pub fn new(name: &'a str, text: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        SourceText {
            name,
            text,
            line_starts,
        }
    }

    /// The name the user knows the file by.
    pub fn name(&self) -> &'a str {
        self.name
    }

    /// The whole text.
    pub fn text(&self) -> &'a str {
        self.text
    }

    /// 1-based (line, column) of a byte offset; the column counts characters.
    pub fn locate(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        let start = self.line_starts[line];
        let mut end = offset;
        while !self.text.is_char_boundary(end) {
            end -= 1;
        }
        let col = self.text[start..end].chars().count() + 1;
        (line + 1, col)
    }

    /// A diagnostic at the start of `span`.
    pub fn diag(
        &self,
        severity: Severity,
        code: Code,
        span: Range<usize>,
        message: impl Into<String>,
    ) -> Diagnostic {
        let (line, col) = self.locate(span.start);
        Diagnostic {
            severity,
            code,
            message: message.into(),
            file: self.name.to_string(),
            line,
            col,
        }
    }
}

/// Every diagnostic found while loading a policy. Displayed one per line.
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// True when any diagnostic is an error.
    pub fn has_errors(&self) -> bool {
        self.0.iter().any(|d| d.severity == Severity::Error)
    }

    /// Only the errors.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.severity == Severity::Error)
    }

    /// Only the warnings.
    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.severity == Severity::Warning)
    }

    /// Sort by file, line and column, so output follows the file top to bottom.
    pub fn sort(&mut self) {
        self.0.sort_by(|a, b| {
            (a.file.as_str(), a.line, a.col, a.severity).cmp(&(
                b.file.as_str(),
                b.line,
                b.col,
                b.severity,
            ))
        });
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        Ok(())
    }
}
