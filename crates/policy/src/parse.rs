//! Reading a policy: parse the TOML with spans, read every key by hand (rejecting unknown ones),
//! validate while collecting every diagnostic. Nothing here touches the filesystem: files named
//! by `sha256_files` are read through the caller's [`Includes`].

use std::collections::HashMap;
use std::ops::Range;

use toml::de::DeValue;

use crate::diag::{Code, Diagnostic, Diagnostics, Severity, SourceText};
use crate::fields::{Fields, Value};
use crate::model::{
    Action, Exemptions, FileFormat, Mode, OnInstall, PackageRef, PolicyInfo, Risk, Rule, Selectors,
    Sha256, Signature, PLACEHOLDERS,
};

/// A file named by the policy (a `sha256_files` entry), as read by the caller.
#[derive(Debug, Clone)]
pub struct IncludedFile {
    /// The name to show in diagnostics (e.g. the path as resolved against the policy's folder).
    pub display_name: String,
    /// The file's text.
    pub text: String,
}

/// Reads files that a policy names, relative to the policy file. The policy crate does no I/O
/// itself; the caller decides how (and whether) to read.
pub trait Includes {
    /// Read `relative` (as written in the policy). The error is a short reason ("No such file").
    fn read(&self, relative: &str) -> Result<IncludedFile, String>;
}

/// [`Includes`] that refuses every file: for policies that must be self-contained.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoIncludes;

impl Includes for NoIncludes {
    fn read(&self, _relative: &str) -> Result<IncludedFile, String> {
        Err("this policy may not name other files".to_string())
    }
}

/// A validated, uncompiled policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyDoc {
    /// The `[policy]` table.
    pub info: PolicyInfo,
    /// The rules, in file order.
    pub rules: Vec<Rule>,
}

/// Executables a policy must never block; a rule that would is flagged with a warning.
pub const CRITICAL_NAMES: &[&str] = &[
    "init",
    "systemd",
    "sh",
    "bash",
    "dash",
    "zsh",
    "fish",
    "ksh",
    "login",
    "sshd",
    "sudo",
    "su",
    "env",
    "interdict",
];

/// Canonical paths of critical executables, tested against every path glob.
pub const CRITICAL_PATHS: &[&str] = &[
    "/sbin/init",
    "/usr/sbin/init",
    "/lib/systemd/systemd",
    "/usr/lib/systemd/systemd",
    "/bin/sh",
    "/usr/bin/sh",
    "/bin/bash",
    "/usr/bin/bash",
    "/bin/dash",
    "/usr/bin/dash",
    "/usr/bin/zsh",
    "/usr/bin/env",
    "/usr/bin/sudo",
    "/usr/bin/su",
    "/usr/bin/login",
    "/usr/sbin/sshd",
    "/usr/bin/interdict",
    "/usr/sbin/interdict",
    "/usr/local/bin/interdict",
    "/usr/local/sbin/interdict",
];

struct Reader<'s, 'i> {
    f: Fields<'s>,
    includes: &'i dyn Includes,
}

impl<'s> std::ops::Deref for Reader<'s, '_> {
    type Target = Fields<'s>;
    fn deref(&self) -> &Fields<'s> {
        &self.f
    }
}

impl std::ops::DerefMut for Reader<'_, '_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.f
    }
}

impl Reader<'_, '_> {
    fn placeholders(&mut self, key: &str, text: &str, span: Range<usize>) {
        let bytes = text.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                let rest = &text[i + 1..];
                let word_len = rest
                    .bytes()
                    .take_while(|b| b.is_ascii_lowercase() || *b == b'_')
                    .count();
                if word_len > 0 && rest.as_bytes().get(word_len) == Some(&b'%') {
                    let word = &rest[..word_len];
                    if !PLACEHOLDERS.contains(&word) {
                        self.err(
                            Code::BadPlaceholder,
                            span.clone(),
                            format!(
                                "unknown placeholder `%{word}%` in `{key}` (known: {})",
                                PLACEHOLDERS
                                    .iter()
                                    .map(|p| format!("%{p}%"))
                                    .collect::<Vec<_>>()
                                    .join(" ")
                            ),
                        );
                    }
                    i += word_len + 2;
                    continue;
                }
            }
            i += 1;
        }
    }

    fn config_glob(&mut self, pattern: &str, span: Range<usize>) -> bool {
        if !self.glob("configs", pattern, span.clone(), false) {
            return false;
        }
        if !(pattern.starts_with('/') || pattern.starts_with("**/") || pattern.starts_with("~/")) {
            self.err(
                Code::BadGlob,
                span,
                format!(
                    "`configs` globs match absolute paths or paths in a home: `{pattern}` must start with `/`, `**/` or `~/`"
                ),
            );
            return false;
        }
        true
    }

    fn glob(&mut self, key: &str, pattern: &str, span: Range<usize>, absolute: bool) -> bool {
        if let Err(e) = crate::model::glob(pattern) {
            let kind = e.kind().to_string();
            self.err(
                Code::BadGlob,
                span,
                format!("bad glob `{pattern}` in `{key}`: {kind}"),
            );
            return false;
        }
        if absolute && !(pattern.starts_with('/') || pattern.starts_with("**")) {
            self.err(
                Code::BadGlob,
                span,
                format!(
                    "`{key}` globs match absolute, symlink-resolved paths: `{pattern}` must start with `/` or `**/`"
                ),
            );
            return false;
        }
        true
    }

    fn policy_info(&mut self, v: &Value<'_>) -> Option<PolicyInfo> {
        const KNOWN: &[&str] = &[
            "name",
            "version",
            "mode",
            "message",
            "more_info_url",
            "max_exception_days",
            "exception_keys",
            "hash_list_keys",
        ];
        let DeValue::Table(t) = v.get_ref() else {
            self.wrong_type("policy", "a table", v);
            return None;
        };
        let (mut name, mut version, mut mode, mut message, mut url) =
            (None, None, None, None, None);
        let mut max_exception_days = None;
        let mut days_span = None;
        let mut exception_keys = Vec::new();
        let mut keys_span = None;
        let mut hash_list_keys = Vec::new();
        let mut ok = true;
        for (k, v) in t.iter() {
            match k.get_ref().as_ref() {
                "max_exception_days" => {
                    days_span = Some(k.span());
                    match self.integer("max_exception_days", v, 365) {
                        Some(0) => {
                            self.err(
                                Code::BadValue,
                                v.span(),
                                "`max_exception_days` must be at least 1 (leave it out to allow no exceptions)",
                            );
                            ok = false;
                        }
                        Some(n) => max_exception_days = Some(n as u32),
                        None => ok = false,
                    }
                }
                key @ ("exception_keys" | "hash_list_keys") => {
                    if key == "exception_keys" {
                        keys_span = Some(k.span());
                    }
                    let mut keys = Vec::new();
                    for (h, span) in self.string_list(key, v) {
                        if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) {
                            keys.push(h.to_ascii_lowercase());
                        } else {
                            self.err(
                                Code::BadPublicKey,
                                span,
                                format!("`{h}` in `{key}` is not a public key (64 hexadecimal digits, as `interdict-collector key` prints it)"),
                            );
                            ok = false;
                        }
                    }
                    if key == "exception_keys" {
                        exception_keys = keys;
                    } else {
                        hash_list_keys = keys;
                    }
                }
                "name" => name = self.string("name", v).map(|s| s.0),
                "version" => version = self.string("version", v).map(|s| s.0),
                "mode" => {
                    mode = self.keyword::<Mode>("mode", v, Code::BadMode, Mode::KEYWORDS);
                    ok &= mode.is_some();
                }
                "message" => {
                    message = self.string("message", v);
                    ok &= message.is_some();
                }
                "more_info_url" => {
                    url = self.string("more_info_url", v);
                    ok &= url.is_some();
                }
                _ => self.unknown_key("[policy]", k, KNOWN),
            }
        }
        for (key, missing) in [
            ("name", name.is_none()),
            ("version", version.is_none()),
            ("mode", mode.is_none()),
        ] {
            if missing && !t.iter().any(|(k, _)| k.get_ref() == key) {
                self.err(
                    Code::MissingKey,
                    v.span(),
                    format!("[policy] needs `{key}`"),
                );
            }
        }
        match (&days_span, &keys_span) {
            (Some(at), None) => self.err(
                Code::MissingKey,
                at.clone(),
                "`max_exception_days` needs `exception_keys`: the keys whose signed exceptions agents accept (`interdict-collector key --exceptions`)",
            ),
            (None, Some(at)) => self.err(
                Code::MissingKey,
                at.clone(),
                "`exception_keys` needs `max_exception_days`: without it no exception is accepted",
            ),
            _ => {}
        }
        if let Some((m, span)) = &message {
            self.placeholders("message", m, span.clone());
        }
        if let Some((u, span)) = &url {
            self.placeholders("more_info_url", u, span.clone());
        }
        if !ok {
            return None;
        }
        Some(PolicyInfo {
            name: name?,
            version: version?,
            mode: mode?,
            message: message.map(|m| m.0),
            more_info_url: url.map(|u| u.0),
            max_exception_days,
            exception_keys,
            hash_list_keys,
        })
    }

    fn selectors(&mut self, v: &Value<'_>) -> Option<(Selectors, Vec<Range<usize>>)> {
        const KNOWN: &[&str] = &[
            "names",
            "paths",
            "scripts",
            "packages",
            "sha256",
            "sha256_files",
            "contains_all",
            "contains_in",
            "configs",
        ];
        let DeValue::Table(t) = v.get_ref() else {
            self.wrong_type("match", "a table", v);
            return None;
        };
        let mut contains_in = None;
        let mut sel = Selectors::default();
        let mut path_spans = Vec::new();
        for (k, v) in t.iter() {
            match k.get_ref().as_ref() {
                "names" => {
                    for (n, span) in self.string_list("names", v) {
                        if n.contains('/') {
                            self.warn(
                                Code::NameWithSlash,
                                span,
                                format!("name `{n}` contains `/` and can never match a basename; use `paths` for paths"),
                            );
                        }
                        sel.names.push(n);
                    }
                }
                "paths" | "scripts" => {
                    let key = k.get_ref().as_ref();
                    for (g, span) in self.string_list(key, v) {
                        if self.glob(key, &g, span.clone(), true) {
                            if key == "paths" {
                                path_spans.push(span);
                                sel.paths.push(g);
                            } else {
                                sel.scripts.push(g);
                            }
                        }
                    }
                }
                "packages" => {
                    for (p, span) in self.string_list("packages", v) {
                        match PackageRef::parse(&p) {
                            Ok(p) => sel.packages.push(p),
                            Err(e) => self.err(Code::BadPackage, span, e),
                        }
                    }
                }
                "sha256" => {
                    for (h, span) in self.string_list("sha256", v) {
                        match Sha256::from_hex(&h) {
                            Some(d) => sel.sha256.push(d),
                            None => self.err(
                                Code::BadSha256,
                                span,
                                format!("`{h}` is not a SHA-256 (64 hexadecimal digits)"),
                            ),
                        }
                    }
                }
                "sha256_files" => {
                    for (f, span) in self.string_list("sha256_files", v) {
                        match self.includes.read(&f) {
                            Ok(file) => {
                                let (digests, diags) = parse_sha256_file_sized(&file);
                                self.extend(diags);
                                for (d, size) in digests {
                                    sel.sha256.push(d);
                                    if let Some(n) = size {
                                        sel.sha256_sizes.insert(d, n);
                                    }
                                }
                            }
                            Err(e) => self.err(
                                Code::MissingSha256File,
                                span,
                                format!("cannot read sha256 file `{f}`: {e}"),
                            ),
                        }
                    }
                }
                "contains_all" => {
                    let list = self.string_list("contains_all", v);
                    if list.is_empty() && matches!(v.get_ref(), DeValue::Array(_)) {
                        self.err(
                            Code::EmptyValue,
                            v.span(),
                            "`contains_all` needs at least one signature",
                        );
                    }
                    for (text, span) in list {
                        match Signature::parse(&text) {
                            Ok(sig) => {
                                if !sel.contains_all.contains(&sig) {
                                    sel.contains_all.push(sig);
                                }
                            }
                            Err(e) => self.err(Code::BadSignature, span, e),
                        }
                    }
                }
                "contains_in" => {
                    let mut formats = Vec::new();
                    for (f, span) in self.string_list("contains_in", v) {
                        match f.parse::<FileFormat>() {
                            Ok(ff) => {
                                if !formats.contains(&ff) {
                                    formats.push(ff);
                                }
                            }
                            Err(()) => {
                                let hint = crate::fields::suggest(&f, FileFormat::KEYWORDS)
                                    .map(|k| format!("; did you mean `{k}`?"))
                                    .unwrap_or_default();
                                self.err(
                                    Code::BadFileFormat,
                                    span,
                                    format!(
                                        "`contains_in` has `{f}`, expected some of: {}{hint}",
                                        FileFormat::KEYWORDS.join(", ")
                                    ),
                                );
                            }
                        }
                    }
                    contains_in = Some((formats, k.span()));
                }
                "configs" => {
                    for (g, span) in self.string_list("configs", v) {
                        if self.config_glob(&g, span) {
                            sel.configs.push(g);
                        }
                    }
                }
                _ => self.unknown_key("[rule.match]", k, KNOWN),
            }
        }
        match contains_in {
            Some((formats, span)) => {
                if !t.iter().any(|(k, _)| k.get_ref() == "contains_all") {
                    self.err(
                        Code::MissingKey,
                        span,
                        "`contains_in` says which files `contains_all` looks into, but this rule has no `contains_all`",
                    );
                }
                sel.contains_in = formats;
            }
            None => sel.contains_in = FileFormat::EXECUTABLES.to_vec(),
        }
        if sel.contains_all.is_empty() {
            sel.contains_in.clear();
        }
        Some((sel, path_spans))
    }

    fn exemptions(&mut self, v: &Value<'_>) -> Exemptions {
        const KNOWN: &[&str] = &["users", "groups", "hosts"];
        let mut ex = Exemptions::default();
        let DeValue::Table(t) = v.get_ref() else {
            self.wrong_type("exempt", "a table", v);
            return ex;
        };
        for (k, v) in t.iter() {
            match k.get_ref().as_ref() {
                "users" => {
                    ex.users = self
                        .string_list("users", v)
                        .into_iter()
                        .map(|s| s.0)
                        .collect()
                }
                "groups" => {
                    ex.groups = self
                        .string_list("groups", v)
                        .into_iter()
                        .map(|s| s.0)
                        .collect()
                }
                "hosts" => {
                    for (h, span) in self.string_list("hosts", v) {
                        if self.glob("hosts", &h, span, false) {
                            ex.hosts.push(h);
                        }
                    }
                }
                _ => self.unknown_key("[rule.exempt]", k, KNOWN),
            }
        }
        ex
    }

    fn rule(&mut self, v: &Value<'_>, seen: &mut HashMap<String, Range<usize>>) -> Option<Rule> {
        const KNOWN: &[&str] = &[
            "id",
            "name",
            "risk",
            "reason",
            "action",
            "enforce_from",
            "message",
            "alternative",
            "notify",
            "on_install",
            "allow_system_files",
            "learn_min_size",
            "match",
            "exempt",
            "exceptions",
        ];
        let DeValue::Table(t) = v.get_ref() else {
            self.wrong_type("rule", "a table ([[rule]])", v);
            return None;
        };
        let mut ok = true;
        let mut id = None;
        let mut name = None;
        let mut risk = None;
        let mut reason = None;
        let mut action = None;
        let mut action_span = v.span();
        let mut enforce_from = None;
        let mut message = None;
        let mut alternative = None;
        let mut notify = Some(true);
        let mut on_install = None;
        let mut allow_system_files = Some(false);
        let mut learn_min_size = Some(crate::model::DEFAULT_LEARN_MIN_SIZE);
        let mut selectors = None;
        let mut match_span = v.span();
        let mut exempt = Exemptions::default();
        let mut exceptions = Some(true);
        for (k, val) in t.iter() {
            match k.get_ref().as_ref() {
                "id" => {
                    if let Some((s, span)) = self.string("id", val) {
                        if !is_kebab(&s) {
                            self.err(
                                Code::BadRuleId,
                                span.clone(),
                                format!("rule id `{s}` must be kebab-case (lower-case letters, digits and single dashes)"),
                            );
                            ok = false;
                        }
                        if let Some(first) = seen.get(&s) {
                            let (l, c) = self.src().locate(first.start);
                            self.err(
                                Code::DuplicateRuleId,
                                span.clone(),
                                format!("rule id `{s}` is already used at line {l}, column {c}"),
                            );
                            ok = false;
                        } else {
                            seen.insert(s.clone(), span);
                        }
                        id = Some(s);
                    }
                }
                "name" => name = self.string("name", val).map(|s| s.0),
                "reason" => reason = self.string("reason", val).map(|s| s.0),
                "risk" => risk = self.keyword::<Risk>("risk", val, Code::BadRisk, Risk::KEYWORDS),
                "action" => {
                    action_span = val.span();
                    action =
                        self.keyword::<Action>("action", val, Code::BadAction, Action::KEYWORDS);
                }
                "enforce_from" => {
                    enforce_from = self.date("enforce_from", val);
                    ok &= enforce_from.is_some();
                }
                "message" => {
                    if let Some((m, span)) = self.string("message", val) {
                        self.placeholders("message", &m, span);
                        message = Some(m);
                    } else {
                        ok = false;
                    }
                }
                "alternative" => {
                    alternative = self.string("alternative", val).map(|s| s.0);
                    ok &= alternative.is_some();
                }
                "notify" => notify = self.boolean("notify", val),
                "on_install" => {
                    on_install = self.keyword::<OnInstall>(
                        "on_install",
                        val,
                        Code::BadValue,
                        OnInstall::KEYWORDS,
                    );
                    ok &= on_install.is_some();
                }
                "allow_system_files" => {
                    allow_system_files = self.boolean("allow_system_files", val)
                }
                "learn_min_size" => {
                    learn_min_size = self.integer("learn_min_size", val, 1 << 40);
                    ok &= learn_min_size.is_some();
                }
                "match" => {
                    match_span = k.span();
                    selectors = self.selectors(val);
                    ok &= selectors.is_some();
                }
                "exempt" => exempt = self.exemptions(val),
                "exceptions" => exceptions = self.boolean("exceptions", val),
                _ => self.unknown_key("[[rule]]", k, KNOWN),
            }
        }
        let label = id
            .as_deref()
            .map(|i| format!("rule `{i}`"))
            .unwrap_or_else(|| "[[rule]]".into());
        for (key, missing) in [
            ("id", id.is_none()),
            ("name", name.is_none()),
            ("risk", risk.is_none()),
            ("reason", reason.is_none()),
            ("action", action.is_none()),
        ] {
            if missing && !t.iter().any(|(k, _)| k.get_ref() == key) {
                self.err(Code::MissingKey, v.span(), format!("{label} needs `{key}`"));
            }
        }
        let (selectors, path_spans) = match selectors {
            Some(s) => s,
            None => {
                if !t.iter().any(|(k, _)| k.get_ref() == "match") {
                    self.err(
                        Code::RuleWithoutSelector,
                        v.span(),
                        format!("{label} has no [rule.match] table: it needs at least one selector (names, paths, scripts, packages, sha256, sha256_files, contains_all, configs)"),
                    );
                }
                return None;
            }
        };
        if selectors.is_empty() {
            let has_files = t.iter().any(|(k, v)| {
                k.get_ref() == "match"
                    && matches!(v.get_ref(), DeValue::Table(m) if m.iter().any(|(k, _)| k.get_ref() == "sha256_files"))
            });
            if !has_files {
                self.err(
                    Code::RuleWithoutSelector,
                    match_span.clone(),
                    format!("{label} has no selector: give at least one of names, paths, scripts, packages, sha256, sha256_files, contains_all, configs"),
                );
                return None;
            }
        }
        let action = action?;
        if selectors.only_configs() && action != Action::Report {
            self.err(
                Code::ConfigAction,
                action_span.clone(),
                format!("{label} matches only configuration files (`configs`), which are reported and never blocked, killed, quarantined or allowed: use action = \"report\""),
            );
            return None;
        }
        if action.is_enforcing() {
            let only_names = !selectors.names.is_empty()
                && selectors.len() == selectors.names.len() + selectors.configs.len();
            if only_names && action != Action::Quarantine {
                self.warn(
                    Code::NameOnlyBlock,
                    action_span.clone(),
                    format!("{label} would {action} on names alone; names collide across tools and any process can set its own: add paths, scripts or sha256"),
                );
            }
            for n in &selectors.names {
                if CRITICAL_NAMES.contains(&n.as_str()) {
                    self.warn(
                        Code::BlocksCriticalBinary,
                        action_span.clone(),
                        format!("{label} would {action} `{n}`, a critical system program (interdict will refuse to block it)"),
                    );
                }
            }
            for (glob, span) in selectors.paths.iter().zip(path_spans) {
                if let Ok(m) = crate::model::glob(glob) {
                    let m = m.compile_matcher();
                    if let Some(p) = CRITICAL_PATHS.iter().find(|p| m.is_match(p)) {
                        self.warn(
                            Code::BlocksCriticalBinary,
                            span,
                            format!("{label}: `{glob}` matches `{p}`, a critical system program (interdict will refuse to block it)"),
                        );
                    }
                }
            }
        }
        if !ok {
            return None;
        }
        Some(Rule {
            id: id?,
            name: name?,
            risk: risk?,
            reason: reason?,
            action,
            enforce_from,
            message,
            alternative,
            notify: notify?,
            on_install: on_install.unwrap_or(if action == Action::Quarantine {
                OnInstall::Quarantine
            } else {
                OnInstall::Report
            }),
            allow_system_files: allow_system_files?,
            learn_min_size: learn_min_size?,
            selectors,
            exempt,
            exceptions: exceptions?,
        })
    }
}

/// Parse a `sha256sum`-style file: `HEX  NAME`, `HEX *NAME` or a bare `HEX` per line;
/// blank lines and `#` comments are ignored.
pub fn parse_sha256_file(file: &IncludedFile) -> (Vec<Sha256>, Vec<Diagnostic>) {
    let (d, diags) = parse_sha256_file_sized(file);
    (d.into_iter().map(|(d, _)| d).collect(), diags)
}

/// Like [`parse_sha256_file`], with each file's size when the line ends in `size=BYTES`
/// (`HEX  NAME  size=245760000`): a program whose size no banned digest has need not be hashed
/// before it may run.
pub fn parse_sha256_file_sized(
    file: &IncludedFile,
) -> (Vec<(Sha256, Option<u64>)>, Vec<Diagnostic>) {
    let src = SourceText::new(&file.display_name, &file.text);
    let mut out = Vec::new();
    let mut diags = Vec::new();
    let mut offset = 0;
    for line in file.text.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let trimmed = line.trim_start();
        let lead = line.len() - trimmed.len();
        let trimmed = trimmed.trim_end();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let hex = trimmed.split_whitespace().next().unwrap_or("");
        let size = match trimmed
            .split_whitespace()
            .skip(1)
            .last()
            .and_then(|t| t.strip_prefix("size="))
        {
            None => None,
            Some(n) => match n.parse::<u64>() {
                Ok(n) => Some(n),
                Err(_) => {
                    let at = start + line.rfind("size=").unwrap_or(lead);
                    diags.push(src.diag(
                        Severity::Error,
                        Code::BadValue,
                        at..at + 5 + n.len(),
                        format!("`size={n}` is not a size in bytes"),
                    ));
                    continue;
                }
            },
        };
        match Sha256::from_hex(hex) {
            Some(d) => out.push((d, size)),
            None => diags.push(src.diag(
                Severity::Error,
                Code::BadSha256,
                start + lead..start + lead + hex.len(),
                format!("`{hex}` is not a SHA-256 (64 hexadecimal digits)"),
            )),
        }
    }
    (out, diags)
}

fn is_kebab(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Read and validate a policy. On success, the policy and its warnings; on failure, every
/// diagnostic (errors and warnings), sorted by position. Never a partial policy.
pub fn read_policy(
    name: &str,
    text: &str,
    includes: &dyn Includes,
) -> Result<(PolicyDoc, Diagnostics), Diagnostics> {
    let src = SourceText::new(name, text);
    let mut r = Reader {
        f: Fields::new(&src),
        includes,
    };
    let Some(root) = r.parse_document(text) else {
        return Err(r.f.finish());
    };
    let mut info = None;
    let mut rules = Vec::new();
    let mut rules_ok = true;
    let mut saw_policy = false;
    let mut saw_rule = false;
    let mut seen = HashMap::new();
    for (k, v) in root.iter() {
        match k.get_ref().as_ref() {
            "policy" => {
                saw_policy = true;
                info = r.policy_info(v);
            }
            "rule" => {
                saw_rule = true;
                match v.get_ref() {
                    DeValue::Array(items) => {
                        for item in items.iter() {
                            match r.rule(item, &mut seen) {
                                Some(rule) => rules.push(rule),
                                None => rules_ok = false,
                            }
                        }
                    }
                    _ => {
                        r.wrong_type("rule", "an array of tables ([[rule]])", v);
                        rules_ok = false;
                    }
                }
            }
            _ => r.unknown_key("the top level", k, &["policy", "rule"]),
        }
    }
    if !saw_policy {
        r.err(Code::MissingKey, 0..0, "the policy needs a [policy] table");
    }
    if !saw_rule {
        r.err(
            Code::NoRules,
            0..0,
            "the policy has no [[rule]]: an empty policy is refused (it is never what an admin meant)",
        );
    }
    let diags = r.f.finish();
    if diags.has_errors() || !rules_ok {
        return Err(diags);
    }
    match info {
        Some(info) => Ok((PolicyDoc { info, rules }, diags)),
        None => Err(diags),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kebab() {
        assert!(is_kebab("claude-code"));
        assert!(is_kebab("a1"));
        assert!(!is_kebab("Claude"));
        assert!(!is_kebab("a--b"));
        assert!(!is_kebab("-a"));
        assert!(!is_kebab("a_b"));
    }

    #[test]
    fn sha256_file_lines() {
        let f = IncludedFile {
            display_name: "h.sha256".into(),
            text: format!("# comment\n\n{}  claude\nnothex  x\n", "ab".repeat(32)),
        };
        let (d, diags) = parse_sha256_file(&f);
        assert_eq!(d.len(), 1);
        assert_eq!(diags.len(), 1);
        assert_eq!(
            diags[0].to_string(),
            "h.sha256:4:1: error[bad-sha256]: `nothex` is not a SHA-256 (64 hexadecimal digits)"
        );
    }
}
