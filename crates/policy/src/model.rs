//! The validated policy: what an admin wrote, with every value checked.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// Build a glob the way every selector uses it: `*` stays within one path component, `**`
/// crosses components.
pub(crate) fn glob(pattern: &str) -> Result<globset::Glob, globset::Error> {
    globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
}

/// The default `learn_min_size`: 4 KiB, below which a file is a stub, a wrapper or empty
/// (the empty file's digest would ban every empty file).
pub const DEFAULT_LEARN_MIN_SIZE: u64 = 4096;

/// A plain calendar date (`enforce_from = 2026-12-01`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date {
    /// Year, e.g. 2026.
    pub year: u16,
    /// Month, 1 to 12.
    pub month: u8,
    /// Day of the month, 1 to 31.
    pub day: u8,
}

impl Date {
    /// The UTC date `secs` seconds after the Unix epoch.
    pub fn from_unix_seconds(secs: i64) -> Date {
        let d = time::OffsetDateTime::from_unix_timestamp(secs)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
            .date();
        Date {
            year: d.year().clamp(0, i32::from(u16::MAX)) as u16,
            month: d.month() as u8,
            day: d.day(),
        }
    }

    /// A date that exists in the calendar (`2026-02-30` does not).
    pub fn new(year: u16, month: u8, day: u8) -> Option<Date> {
        let m = time::Month::try_from(month).ok()?;
        time::Date::from_calendar_date(i32::from(year), m, day).ok()?;
        Some(Date { year, month, day })
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

impl Serialize for Date {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

macro_rules! keyword_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $text:literal,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(rename_all = "lowercase")]
        pub enum $name {
            $($(#[$vdoc])* $variant,)*
        }

        impl $name {
            /// Every accepted keyword, in order.
            pub const KEYWORDS: &'static [&'static str] = &[$($text,)*];

            /// The keyword as written in a policy.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }
        }

        impl FromStr for $name {
            type Err = ();
            fn from_str(s: &str) -> Result<Self, ()> {
                match s {
                    $($text => Ok($name::$variant),)*
                    _ => Err(()),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

keyword_enum! {
    /// Whether the policy enforces or only reports.
    Mode {
        /// Block, kill and quarantine as the rules say.
        Enforce => "enforce",
        /// Report what would have been done; change nothing.
        Monitor => "monitor",
    }
}

keyword_enum! {
    /// What a rule does when it matches.
    Action {
        /// Deny the exec before it runs where the kernel allows it, else kill the process.
        Block => "block",
        /// Let the exec happen, then kill the process.
        Kill => "kill",
        /// Move the installed file into quarantine.
        Quarantine => "quarantine",
        /// Record a violation and tell the employee; change nothing.
        Report => "report",
        /// An exception: this program is allowed even if another rule matches it.
        Allow => "allow",
    }
}

impl Action {
    /// True for the actions that change something on the machine.
    pub fn is_enforcing(self) -> bool {
        matches!(self, Action::Block | Action::Kill | Action::Quarantine)
    }

    /// Order among non-allow actions at equal specificity: the stronger wins.
    pub(crate) fn strength(self) -> u8 {
        match self {
            Action::Allow => 5,
            Action::Block => 4,
            Action::Kill => 3,
            Action::Quarantine => 2,
            Action::Report => 1,
        }
    }
}

keyword_enum! {
    /// What happens to a banned file found installed.
    OnInstall {
        /// Report it (and tell its owner).
        Report => "report",
        /// Move it into the quarantine store.
        Quarantine => "quarantine",
    }
}

keyword_enum! {
    /// How risky the security review judged a tool.
    Risk {
        /// Low risk.
        Low => "low",
        /// Medium risk.
        Medium => "medium",
        /// High risk.
        High => "high",
        /// Critical risk.
        Critical => "critical",
    }
}

/// The `[policy]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyInfo {
    /// Policy name.
    pub name: String,
    /// Policy version, free text (dates recommended).
    pub version: String,
    /// Enforce or monitor.
    pub mode: Mode,
    /// Default text shown to the employee.
    pub message: Option<String>,
    /// Link for more information, with `%placeholders%`.
    pub more_info_url: Option<String>,
    /// `max_exception_days`: the longest exception a reviewer may grant; `None` (the default):
    /// exceptions are off.
    pub max_exception_days: Option<u32>,
    /// `exception_keys`: public keys (64 hex digits) whose signed exceptions are accepted (the
    /// collector's exception key; two during a rotation).
    pub exception_keys: Vec<String>,
    /// `hash_list_keys`: public keys (64 hex digits) whose signed lists of approved digests are
    /// accepted, only ever as additions to block, kill and quarantine rules (the collector's
    /// hash-list key).
    pub hash_list_keys: Vec<String>,
}

/// A package marker: an ecosystem and a package name, e.g. `npm:@anthropic-ai/claude-code`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PackageRef {
    /// The package ecosystem.
    pub ecosystem: Ecosystem,
    /// The package name, normalized for the ecosystem.
    pub name: String,
}

impl PackageRef {
    /// A package reference with the name normalized for its ecosystem
    /// (PyPI: PEP 503; VS Code extensions: lower case).
    pub fn new(ecosystem: Ecosystem, name: &str) -> PackageRef {
        let name = match ecosystem {
            Ecosystem::Npm => name.to_string(),
            Ecosystem::Vscode => name.to_ascii_lowercase(),
            Ecosystem::Pypi => {
                let mut out = String::with_capacity(name.len());
                let mut sep = false;
                for c in name.chars() {
                    if matches!(c, '-' | '_' | '.') {
                        sep = true;
                    } else {
                        if sep && !out.is_empty() {
                            out.push('-');
                        }
                        sep = false;
                        out.push(c.to_ascii_lowercase());
                    }
                }
                out
            }
        };
        PackageRef { ecosystem, name }
    }

    /// Parse `ecosystem:name`.
    pub fn parse(s: &str) -> Result<PackageRef, String> {
        let (eco, name) = s
            .split_once(':')
            .ok_or_else(|| format!("`{s}` is not `ecosystem:name`"))?;
        let ecosystem: Ecosystem = eco.parse().map_err(|()| {
            format!(
                "unknown package ecosystem `{eco}` (expected one of: {})",
                Ecosystem::KEYWORDS.join(", ")
            )
        })?;
        if name.is_empty() || name.chars().any(|c| c.is_whitespace()) {
            return Err(format!("`{s}` has an empty or blank package name"));
        }
        Ok(PackageRef::new(ecosystem, name))
    }
}

impl fmt::Display for PackageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.ecosystem, self.name)
    }
}

keyword_enum! {
    /// Where a package comes from.
    Ecosystem {
        /// The npm registry (`node_modules/<name>/package.json`).
        Npm => "npm",
        /// PyPI (`<name>-<version>.dist-info`).
        Pypi => "pypi",
        /// VS Code-style editor extensions (`<publisher>.<name>-<version>` directories).
        Vscode => "vscode",
    }
}

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256(pub [u8; 32]);

impl Sha256 {
    /// Parse 64 hexadecimal digits (either case).
    pub fn from_hex(s: &str) -> Option<Sha256> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Sha256(out))
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256({self})")
    }
}

impl Serialize for Sha256 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The shortest signature accepted in `contains_all`, in bytes: shorter ones occur by chance.
pub const MIN_SIGNATURE_BYTES: usize = 8;
/// The longest signature accepted in `contains_all`, in bytes (it bounds what is carried over
/// from one read buffer to the next).
pub const MAX_SIGNATURE_BYTES: usize = 256;

/// A byte signature of a family rule (`contains_all`).
///
/// Written as text and matched as its UTF-8 bytes, case-sensitively. Inside the text, `\xHH`
/// (two hexadecimal digits) stands for one byte and `\\` for one backslash; any other backslash
/// is an error. Write signatures with bytes in TOML literal strings (`'\x7fELF'`) so that TOML
/// leaves the backslash alone. Length: [`MIN_SIGNATURE_BYTES`] to [`MAX_SIGNATURE_BYTES`] bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Signature {
    /// The signature as written in the policy.
    pub text: String,
    /// The bytes it stands for.
    pub bytes: Vec<u8>,
}

impl Signature {
    /// Read a signature as written in a policy.
    pub fn parse(text: &str) -> Result<Signature, String> {
        let mut bytes = Vec::with_capacity(text.len());
        let raw = text.as_bytes();
        let mut i = 0;
        while i < raw.len() {
            if raw[i] != b'\\' {
                bytes.push(raw[i]);
                i += 1;
                continue;
            }
            match raw.get(i + 1) {
                Some(b'\\') => {
                    bytes.push(b'\\');
                    i += 2;
                }
                Some(b'x') => {
                    let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
                    match (hex(raw.get(i + 2)), hex(raw.get(i + 3))) {
                        (Some(h), Some(l)) => {
                            bytes.push((h * 16 + l) as u8);
                            i += 4;
                        }
                        _ => {
                            return Err(format!(
                                "signature `{text}`: `\\x` must be followed by two hexadecimal digits"
                            ))
                        }
                    }
                }
                _ => {
                    return Err(format!(
                        "signature `{text}`: a backslash starts `\\xHH` (one byte) or `\\\\` (a backslash); write other text as it is"
                    ))
                }
            }
        }
        if bytes.len() < MIN_SIGNATURE_BYTES {
            return Err(format!(
                "signature `{text}` is {} bytes long: at least {MIN_SIGNATURE_BYTES} are needed (shorter ones occur by chance)",
                bytes.len()
            ));
        }
        if bytes.len() > MAX_SIGNATURE_BYTES {
            return Err(format!(
                "signature `{text}` is {} bytes long: at most {MAX_SIGNATURE_BYTES} are allowed",
                bytes.len()
            ));
        }
        Ok(Signature {
            text: text.to_string(),
            bytes,
        })
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The kind of file a family rule (`contains_all`) looks into, told by its first bytes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
pub enum FileFormat {
    /// ELF (`\x7fELF`): Linux and BSD executables and libraries.
    #[serde(rename = "elf")]
    Elf,
    /// Mach-O (thin 32/64-bit either byte order, or universal): macOS executables.
    #[serde(rename = "mach-o")]
    MachO,
    /// PE (`MZ`): Windows executables.
    #[serde(rename = "pe")]
    Pe,
    /// A script with a `#!` line.
    #[serde(rename = "script")]
    Script,
}

impl FileFormat {
    /// Every accepted keyword, in order.
    pub const KEYWORDS: &'static [&'static str] = &["elf", "mach-o", "pe", "script"];
    /// Every format, in the order of [`FileFormat::KEYWORDS`].
    pub const ALL: &'static [FileFormat] = &[
        FileFormat::Elf,
        FileFormat::MachO,
        FileFormat::Pe,
        FileFormat::Script,
    ];
    /// The formats a family rule looks into when it does not say (`contains_in`): executables.
    pub const EXECUTABLES: &'static [FileFormat] =
        &[FileFormat::Elf, FileFormat::MachO, FileFormat::Pe];
    /// How many leading bytes [`FileFormat::detect`] looks at.
    pub const MAGIC_BYTES: usize = 8;

    /// The keyword as written in a policy.
    pub fn as_str(self) -> &'static str {
        match self {
            FileFormat::Elf => "elf",
            FileFormat::MachO => "mach-o",
            FileFormat::Pe => "pe",
            FileFormat::Script => "script",
        }
    }

    /// The format of a file from its first bytes (up to [`FileFormat::MAGIC_BYTES`]).
    pub fn detect(head: &[u8]) -> Option<FileFormat> {
        let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        match head {
            [0x7f, b'E', b'L', b'F', ..] => Some(FileFormat::Elf),
            [b'#', b'!', ..] => Some(FileFormat::Script),
            [b'M', b'Z', ..] => Some(FileFormat::Pe),
            [0xfe, 0xed, 0xfa, 0xce | 0xcf, ..] | [0xce | 0xcf, 0xfa, 0xed, 0xfe, ..] => {
                Some(FileFormat::MachO)
            }
            // Universal binaries share their magic with Java class files; the word after it is
            // an architecture count (small) in one and a class file version (45 or more) in the
            // other.
            [0xca, 0xfe, 0xba, 0xbe | 0xbf, ..] if head.len() >= 8 && be(&head[4..8]) < 45 => {
                Some(FileFormat::MachO)
            }
            _ => None,
        }
    }
}

impl FromStr for FileFormat {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "elf" => Ok(FileFormat::Elf),
            "mach-o" => Ok(FileFormat::MachO),
            "pe" => Ok(FileFormat::Pe),
            "script" => Ok(FileFormat::Script),
            _ => Err(()),
        }
    }
}

impl fmt::Display for FileFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `[rule.match]` table: the selectors of one rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selectors {
    /// Executable basenames, argv[0] basenames or comm values.
    pub names: Vec<String>,
    /// Globs on the canonical executable path.
    pub paths: Vec<String>,
    /// Globs on the canonical path of an interpreter's script.
    pub scripts: Vec<String>,
    /// Installed package markers.
    pub packages: Vec<PackageRef>,
    /// Digests, inline and from `sha256_files`.
    pub sha256: Vec<Sha256>,
    /// A family rule: byte signatures that must all occur in one file (`contains_all`).
    pub contains_all: Vec<Signature>,
    /// The kinds of file `contains_all` looks into (`contains_in`; default: ELF, Mach-O, PE).
    pub contains_in: Vec<FileFormat>,
    /// Globs on AI-agent configuration files (`configs`); `~/` starts a path in any home.
    pub configs: Vec<String>,
    /// The file size of a digest, where the hash list says it (`size=BYTES`) or it was learned.
    pub sha256_sizes: std::collections::HashMap<Sha256, u64>,
}

impl Selectors {
    /// Number of selector values (a family rule's signatures count as one).
    pub fn len(&self) -> usize {
        self.names.len()
            + self.paths.len()
            + self.scripts.len()
            + self.packages.len()
            + self.sha256.len()
            + usize::from(!self.contains_all.is_empty())
            + self.configs.len()
    }

    /// True when the rule matches only configuration files (`configs` and nothing else).
    pub fn only_configs(&self) -> bool {
        !self.configs.is_empty() && self.len() == self.configs.len()
    }

    /// True when the rule has no selector at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The `[rule.exempt]` table: who a rule does not apply to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exemptions {
    /// User names.
    pub users: Vec<String>,
    /// Group names.
    pub groups: Vec<String>,
    /// Host name globs.
    pub hosts: Vec<String>,
}

/// One `[[rule]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Unique kebab-case id.
    pub id: String,
    /// Human-readable name of the tool.
    pub name: String,
    /// Risk level.
    pub risk: Risk,
    /// Why it is banned (shown to the employee).
    pub reason: String,
    /// What happens on a match.
    pub action: Action,
    /// Before this date, enforcing actions only report and warn.
    pub enforce_from: Option<Date>,
    /// Overrides the policy message.
    pub message: Option<String>,
    /// The approved alternative to use instead.
    pub alternative: Option<String>,
    /// Whether to tell the employee.
    pub notify: bool,
    /// What happens to a matching file found installed (default: quarantine for the
    /// `quarantine` action, report otherwise).
    pub on_install: OnInstall,
    /// Whether files owned by a system package (dpkg/rpm) may be quarantined.
    pub allow_system_files: bool,
    /// Files smaller than this (bytes) are never learned from (an installer's placeholder, a
    /// one-line wrapper): `learn_min_size`, default [`DEFAULT_LEARN_MIN_SIZE`].
    pub learn_min_size: u64,
    /// What the rule matches.
    pub selectors: Selectors,
    /// Who it does not apply to.
    pub exempt: Exemptions,
    /// `exceptions`: whether time-boxed exceptions may suspend this rule for one user (default
    /// true; exceptions also need `[policy] max_exception_days`).
    pub exceptions: bool,
}

/// A time-boxed exception: on the host that holds it, rule `rule_id` does not apply to `user`
/// from `from` until `until` (Unix seconds, `until` excluded). Granted with
/// [`Policy::grant`](crate::Policy::grant), which checks it against the policy; the time of each
/// decision comes from the caller ([`Facts::now`](crate::Facts::now)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Exception {
    /// The exception's id.
    pub id: String,
    /// The rule it suspends.
    pub rule_id: String,
    /// The one user it is for.
    pub user: String,
    /// Start, Unix seconds.
    pub from: i64,
    /// End (excluded), Unix seconds.
    pub until: i64,
}

/// Why the policy refuses an exception.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExceptionRefusal {
    /// The policy has no such rule.
    #[error("the policy has no rule `{0}`")]
    UnknownRule(String),
    /// `max_exception_days` is not set: exceptions are off.
    #[error("the policy allows no exceptions (no `max_exception_days` in [policy])")]
    Off,
    /// The rule says `exceptions = false`.
    #[error("rule `{0}` allows no exceptions (`exceptions = false`)")]
    Forbidden(String),
    /// The rule does not stop anything (report or allow): nothing to except.
    #[error("rule `{0}` does not block, kill or quarantine: there is nothing to except")]
    NotEnforcing(String),
    /// Longer than `max_exception_days`.
    #[error("{:.2} days is longer than the policy allows ({max} days)", *.seconds as f64 / 86400.0)]
    TooLong {
        /// Its length, seconds.
        seconds: i64,
        /// The policy's limit.
        max: u32,
    },
    /// Ends before it starts.
    #[error("it ends before it starts")]
    Empty,
    /// The user name is empty or not one plain name.
    #[error("`{0}` is not one user name")]
    BadUser(String),
}

/// Placeholders accepted in `message` and `more_info_url`.
pub const PLACEHOLDERS: &[&str] = &["rule_id", "sha256", "path", "host", "user"];
