//! The compiled policy and the matcher: one glob automaton per selector kind, hash maps for names,
//! packages and digests.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use globset::{Candidate, GlobBuilder, GlobSet, GlobSetBuilder};
use serde::Serialize;

use crate::content::{ContentMatch, ContentSearcher};
use crate::diag::Diagnostics;
use crate::model::{
    glob, Action, Date, Exception, ExceptionRefusal, Mode, PackageRef, PolicyInfo, Rule, Sha256,
};
use crate::parse::{read_policy, Includes, PolicyDoc};

/// Which kind of selector matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SelectorKind {
    /// The SHA-256 of the executable or script.
    Sha256,
    /// A family rule: every `contains_all` signature occurs in the executable or script.
    Contains,
    /// A glob on the canonical executable path.
    Path,
    /// A glob on the canonical script path.
    Script,
    /// An installed package marker.
    Package,
    /// A name (basename, argv\[0\] basename or comm).
    Name,
    /// A glob on an AI-agent configuration file.
    Config,
}

impl SelectorKind {
    /// How specific a match of this kind is: higher wins. The exact digest first; then what the
    /// file holds (a family rule), which survives renames, moves and small edits; then where it
    /// lies or which package it belongs to, which the user chooses; names last.
    pub fn specificity(self) -> u8 {
        match self {
            SelectorKind::Sha256 => 4,
            SelectorKind::Contains => 3,
            SelectorKind::Path
            | SelectorKind::Script
            | SelectorKind::Package
            | SelectorKind::Config => 2,
            SelectorKind::Name => 1,
        }
    }

    /// The policy key of this selector kind.
    pub fn as_str(self) -> &'static str {
        match self {
            SelectorKind::Sha256 => "sha256",
            SelectorKind::Contains => "contains",
            SelectorKind::Path => "path",
            SelectorKind::Script => "script",
            SelectorKind::Package => "package",
            SelectorKind::Name => "name",
            SelectorKind::Config => "config",
        }
    }
}

/// What is known about one program: a process at exec, or a file found installed.
/// Fill in what you know; everything is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// Candidate names: executable basename, argv\[0\] basename, comm.
    pub names: Vec<String>,
    /// Canonical (symlink-resolved) path of the executable.
    pub exe_path: Option<PathBuf>,
    /// Canonical path of the script an interpreter runs (or of a script file found installed).
    pub script_path: Option<PathBuf>,
    /// Installed package markers.
    pub packages: Vec<PackageRef>,
    /// SHA-256 of the executable.
    pub exe_sha256: Option<Sha256>,
    /// SHA-256 of the script.
    pub script_sha256: Option<Sha256>,
    /// What the executable holds (from [`ContentSearcher`], in the read that hashed it).
    pub exe_content: Option<ContentMatch>,
    /// What the script holds.
    pub script_content: Option<ContentMatch>,
    /// Canonical path of an AI-agent configuration file.
    pub config_path: Option<PathBuf>,
    /// The same file as `~/REST` when it lies in a user's home (for `configs` globs that start
    /// with `~/`).
    pub config_home_path: Option<PathBuf>,
    /// The user the process runs as, or the file's owner.
    pub user: Option<String>,
    /// That user's groups.
    pub groups: Vec<String>,
    /// This machine's host name.
    pub host: Option<String>,
    /// When the decision is made, Unix seconds: exceptions ([`Policy::grant`]) apply only when
    /// it is given and falls within theirs.
    pub now: Option<i64>,
}

impl Facts {
    /// Add a candidate name, unless it is empty or already known.
    pub fn add_name(&mut self, name: Option<String>) {
        if let Some(n) = name {
            if !n.is_empty() && !self.names.contains(&n) {
                self.names.push(n);
            }
        }
    }
}

/// The fact that a selector matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// The executable (path or hash).
    Exe,
    /// The script (path or hash).
    Script,
    /// `Facts::packages[i]`.
    Package(usize),
    /// `Facts::names[i]`.
    Name(usize),
    /// The configuration file.
    Config,
}

/// The winning rule for one set of facts. Cheap to produce: indexes only, no strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Index of the rule in [`Policy::rules`].
    pub rule: usize,
    /// The rule's action (before mode and `enforce_from` are applied; see [`Policy::enforcement`]).
    pub action: Action,
    /// Which selector kind matched.
    pub selector: SelectorKind,
    /// Index of the matching value within that selector kind of the rule (for sha256: the digest
    /// index in the rule's combined inline and file digests).
    pub pattern: usize,
    /// Which fact matched.
    pub subject: Subject,
}

/// A decision spelled out: what matched, with the evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Evidence {
    /// The rule id.
    pub rule_id: String,
    /// The rule's action.
    pub action: Action,
    /// The selector kind that matched.
    pub selector: SelectorKind,
    /// The rule's value that matched (glob, name, package, digest).
    pub pattern: String,
    /// The fact that matched it (path, name, package, digest).
    pub value: String,
}

/// Whether a decision is carried out, given the policy mode and the rule's `enforce_from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "since")]
pub enum Enforcement {
    /// The action is carried out.
    Enforced,
    /// The action would change the machine but only reports: the policy is in monitor mode.
    Monitor,
    /// The action would change the machine but only reports until this date.
    NotYet(Date),
    /// The action only reports (`report`) or allows (`allow`).
    ReportOnly,
}

/// Counts of selectors, for summaries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SelectorCounts {
    /// Name selectors.
    pub names: usize,
    /// Path globs.
    pub paths: usize,
    /// Script globs.
    pub scripts: usize,
    /// Package markers.
    pub packages: usize,
    /// Digests (inline and from files).
    pub sha256: usize,
    /// Family rules (`contains_all`).
    pub families: usize,
    /// Configuration file globs.
    pub configs: usize,
}

impl SelectorCounts {
    /// All selectors together.
    pub fn total(&self) -> usize {
        self.names
            + self.paths
            + self.scripts
            + self.packages
            + self.sha256
            + self.families
            + self.configs
    }
}

#[derive(Debug, Clone)]
struct GlobIndex {
    set: GlobSet,
    /// For each glob in `set`: (rule index, index within the rule's list).
    owners: Vec<(u32, u32)>,
}

impl GlobIndex {
    fn build<'r>(lists: impl Iterator<Item = &'r [String]>) -> Result<GlobIndex, globset::Error> {
        GlobIndex::build_filtered(lists, |_| true)
    }

    /// Only the globs `keep` accepts; owners keep their index within the rule's whole list.
    fn build_filtered<'r>(
        lists: impl Iterator<Item = &'r [String]>,
        keep: impl Fn(&str) -> bool,
    ) -> Result<GlobIndex, globset::Error> {
        let mut b = GlobSetBuilder::new();
        let mut owners = Vec::new();
        for (ri, list) in lists.enumerate() {
            for (pi, g) in list.iter().enumerate() {
                if keep(g) {
                    b.add(glob(g)?);
                    owners.push((ri as u32, pi as u32));
                }
            }
        }
        Ok(GlobIndex {
            set: b.build()?,
            owners,
        })
    }
}

/// A validated and compiled policy, ready to match.
#[derive(Debug, Clone)]
pub struct Policy {
    info: PolicyInfo,
    rules: Vec<Rule>,
    names: HashMap<String, Vec<(u32, u32)>>,
    packages: HashMap<PackageRef, Vec<(u32, u32)>>,
    sha256: HashMap<Sha256, Vec<(u32, u32)>>,
    /// Per rule, how many of its `sha256` entries the policy file declared: the rest were
    /// learned on this host.
    declared_sha256: Vec<usize>,
    /// The sizes of the files the digests name, where known.
    digest_sizes: std::collections::HashSet<u64>,
    /// How many digests have no known size (any file may then match one).
    unsized_digests: usize,
    paths: GlobIndex,
    scripts: GlobIndex,
    /// `configs` globs on absolute paths.
    configs: GlobIndex,
    /// `configs` globs that start with `~/`, matched against `Facts::config_home_path`.
    home_configs: GlobIndex,
    content: Option<Arc<ContentSearcher>>,
    exempt_hosts: Vec<Option<GlobSet>>,
    /// Granted exceptions, with the index of their rule.
    exceptions: Vec<(usize, Exception)>,
}

impl Policy {
    /// Read, validate and compile a policy in one step. `name` is how diagnostics name the file.
    pub fn load(
        name: &str,
        text: &str,
        includes: &dyn Includes,
    ) -> Result<(Policy, Diagnostics), Diagnostics> {
        let (doc, warnings) = read_policy(name, text, includes)?;
        Ok((Policy::compile(doc), warnings))
    }

    /// Compile a validated policy.
    pub fn compile(doc: PolicyDoc) -> Policy {
        let PolicyDoc { info, rules } = doc;
        let mut names: HashMap<String, Vec<(u32, u32)>> = HashMap::new();
        let mut packages: HashMap<PackageRef, Vec<(u32, u32)>> = HashMap::new();
        let mut sha256: HashMap<Sha256, Vec<(u32, u32)>> = HashMap::new();
        for (ri, r) in rules.iter().enumerate() {
            let ri = ri as u32;
            for (i, n) in r.selectors.names.iter().enumerate() {
                names.entry(n.clone()).or_default().push((ri, i as u32));
            }
            for (i, p) in r.selectors.packages.iter().enumerate() {
                packages.entry(p.clone()).or_default().push((ri, i as u32));
            }
            for (i, d) in r.selectors.sha256.iter().enumerate() {
                sha256.entry(*d).or_default().push((ri, i as u32));
            }
        }
        // Every glob was compiled once during validation, so these cannot fail.
        let paths = GlobIndex::build(rules.iter().map(|r| r.selectors.paths.as_slice()))
            .expect("path globs were validated");
        let scripts = GlobIndex::build(rules.iter().map(|r| r.selectors.scripts.as_slice()))
            .expect("script globs were validated");
        let configs =
            GlobIndex::build_filtered(rules.iter().map(|r| r.selectors.configs.as_slice()), |g| {
                !g.starts_with("~/")
            })
            .expect("config globs were validated");
        let home_configs =
            GlobIndex::build_filtered(rules.iter().map(|r| r.selectors.configs.as_slice()), |g| {
                g.starts_with("~/")
            })
            .expect("config globs were validated");
        let content = ContentSearcher::build(&rules).map(Arc::new);
        let exempt_hosts = rules
            .iter()
            .map(|r| {
                if r.exempt.hosts.is_empty() {
                    return None;
                }
                let mut b = GlobSetBuilder::new();
                for h in &r.exempt.hosts {
                    let g = GlobBuilder::new(h)
                        .case_insensitive(true)
                        .build()
                        .expect("host globs were validated");
                    b.add(g);
                }
                Some(b.build().expect("host globs were validated"))
            })
            .collect();
        let declared_sha256 = rules.iter().map(|r| r.selectors.sha256.len()).collect();
        let mut digest_sizes = std::collections::HashSet::new();
        let mut unsized_digests = 0;
        for r in &rules {
            for d in &r.selectors.sha256 {
                match r.selectors.sha256_sizes.get(d) {
                    Some(n) => {
                        digest_sizes.insert(*n);
                    }
                    None => unsized_digests += 1,
                }
            }
        }
        Policy {
            info,
            declared_sha256,
            digest_sizes,
            unsized_digests,
            rules,
            names,
            packages,
            sha256,
            paths,
            scripts,
            configs,
            home_configs,
            content,
            exempt_hosts,
            exceptions: Vec::new(),
        }
    }

    /// Add a digest to a rule's `sha256` selectors (a learned hash: the digest of a file one of
    /// its other selectors matched), with the file's size when known. False when the rule does
    /// not exist or already has it.
    /// An `allow` rule never learns: a digest added to it would let that file through every
    /// other rule.
    pub fn learn(&mut self, rule_id: &str, digest: Sha256, size: Option<u64>) -> bool {
        let Some(ri) = self
            .rules
            .iter()
            .position(|r| r.id == rule_id && r.action != Action::Allow)
        else {
            return false;
        };
        let sel = &mut self.rules[ri].selectors;
        if sel.sha256.contains(&digest) {
            return false;
        }
        match size {
            Some(n) => {
                sel.sha256_sizes.insert(digest, n);
                self.digest_sizes.insert(n);
            }
            None => self.unsized_digests += 1,
        }
        let list = &mut sel.sha256;
        list.push(digest);
        self.sha256
            .entry(digest)
            .or_default()
            .push((ri as u32, (list.len() - 1) as u32));
        true
    }

    /// True when `d` matched a digest learned on this host (added by [`Policy::learn`]), not
    /// one the policy file declared.
    pub fn is_learned(&self, d: &Decision) -> bool {
        d.selector == SelectorKind::Sha256 && d.pattern >= self.declared_sha256[d.rule]
    }

    /// The `[policy]` table.
    pub fn info(&self) -> &PolicyInfo {
        &self.info
    }

    /// The rules in file order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The rule a decision names.
    pub fn rule(&self, d: &Decision) -> &Rule {
        &self.rules[d.rule]
    }

    /// Selector counts over the whole policy.
    pub fn selector_counts(&self) -> SelectorCounts {
        let mut c = SelectorCounts::default();
        for r in &self.rules {
            c.names += r.selectors.names.len();
            c.paths += r.selectors.paths.len();
            c.scripts += r.selectors.scripts.len();
            c.packages += r.selectors.packages.len();
            c.sha256 += r.selectors.sha256.len();
            c.families += usize::from(!r.selectors.contains_all.is_empty());
            c.configs += r.selectors.configs.len();
        }
        c
    }

    /// True when some rule matches by SHA-256, so callers must hash to decide.
    pub fn needs_sha256(&self) -> bool {
        !self.sha256.is_empty()
    }

    /// True when some rule is a family rule, so callers must look into files (in the read that
    /// hashes them, see [`Policy::content_searcher`]) to decide.
    pub fn needs_content(&self) -> bool {
        self.content.is_some()
    }

    /// The compiled signatures of every family rule, for the code that reads files; `None` when
    /// the policy has no family rule. Facts made with another policy's searcher are ignored.
    pub fn content_searcher(&self) -> Option<&Arc<ContentSearcher>> {
        self.content.as_ref()
    }

    /// True when a file of `size` bytes starting with `head` could be identified by a family
    /// rule (see [`ContentSearcher::may_match`]); always false without family rules.
    pub fn may_match_content(&self, size: u64, head: &[u8]) -> bool {
        self.content
            .as_deref()
            .is_some_and(|c| c.may_match(size, head))
    }

    /// True when some rule has `configs` selectors.
    pub fn has_configs(&self) -> bool {
        !self.configs.owners.is_empty() || !self.home_configs.owners.is_empty()
    }

    /// Every `configs` glob, in rule order.
    pub fn config_globs(&self) -> impl Iterator<Item = &str> {
        self.rules
            .iter()
            .flat_map(|r| r.selectors.configs.iter())
            .map(String::as_str)
    }

    /// True when a configuration file glob matches `path` (absolute) or `home_path` (`~/...`).
    pub fn is_config_path(&self, path: &Path, home_path: Option<&Path>) -> bool {
        self.configs.set.is_match(path)
            || home_path.is_some_and(|h| self.home_configs.set.is_match(h))
    }

    /// Every `configs` glob that starts with `~/`, for finding them in each home.
    pub fn home_config_globs(&self) -> impl Iterator<Item = &str> {
        self.rules
            .iter()
            .flat_map(|r| r.selectors.configs.iter())
            .filter(|g| g.starts_with("~/"))
            .map(String::as_str)
    }

    /// True when a file of `size` bytes may have a digest some rule names: always when a digest
    /// of unknown size is in force, else only for the sizes the digests are known to have. A
    /// file of any other size need not be hashed to be judged.
    pub fn may_match_size(&self, size: u64) -> bool {
        !self.sha256.is_empty() && (self.unsized_digests > 0 || self.digest_sizes.contains(&size))
    }

    /// True when some rule has `scripts` selectors.
    pub fn has_scripts(&self) -> bool {
        !self.scripts.owners.is_empty()
    }

    /// True when `path` matches some script glob (to find files for the script guard).
    pub fn is_script_path(&self, path: &Path) -> bool {
        self.scripts.set.is_match(path)
    }

    /// Whether `e` would be accepted: its rule exists, stops something and allows exceptions,
    /// the policy allows exceptions, and it lasts no longer than `max_exception_days`.
    pub fn check_exception(&self, e: &Exception) -> Result<usize, ExceptionRefusal> {
        let Some(ri) = self.rules.iter().position(|r| r.id == e.rule_id) else {
            return Err(ExceptionRefusal::UnknownRule(e.rule_id.clone()));
        };
        let rule = &self.rules[ri];
        let Some(max) = self.info.max_exception_days else {
            return Err(ExceptionRefusal::Off);
        };
        if !rule.exceptions {
            return Err(ExceptionRefusal::Forbidden(rule.id.clone()));
        }
        if !rule.action.is_enforcing() {
            return Err(ExceptionRefusal::NotEnforcing(rule.id.clone()));
        }
        if e.user.is_empty()
            || e.user.len() > 256
            || e.user.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(ExceptionRefusal::BadUser(e.user.clone()));
        }
        if e.until <= e.from {
            return Err(ExceptionRefusal::Empty);
        }
        let seconds = e.until - e.from;
        if seconds > i64::from(max) * 86_400 {
            return Err(ExceptionRefusal::TooLong { seconds, max });
        }
        Ok(ri)
    }

    /// Grant an exception (replacing one with the same id): from `from` until `until`, its
    /// rule does not apply to its user. Refused unless [`Policy::check_exception`] accepts it.
    pub fn grant(&mut self, e: Exception) -> Result<(), ExceptionRefusal> {
        let ri = self.check_exception(&e)?;
        self.exceptions.retain(|(_, x)| x.id != e.id);
        self.exceptions.push((ri, e));
        Ok(())
    }

    /// The exceptions granted.
    pub fn exceptions(&self) -> impl Iterator<Item = &Exception> {
        self.exceptions.iter().map(|(_, e)| e)
    }

    /// True when whether rule `rule` applies depends on who runs the program: it exempts users
    /// or groups, or an exception was granted for it. (A decision that involves such a rule
    /// holds for one user only and must not be remembered by file.)
    fn per_user(&self, rule: usize) -> bool {
        let ex = &self.rules[rule].exempt;
        !ex.users.is_empty()
            || !ex.groups.is_empty()
            || self.exceptions.iter().any(|(r, _)| *r == rule)
    }

    fn exempt(&self, rule: usize, facts: &Facts) -> bool {
        let ex = &self.rules[rule].exempt;
        if let Some(u) = &facts.user {
            if ex.users.iter().any(|x| x == u) {
                return true;
            }
            if let Some(now) = facts.now {
                if self
                    .exceptions
                    .iter()
                    .any(|(r, e)| *r == rule && &e.user == u && e.from <= now && now < e.until)
                {
                    return true;
                }
            }
        }
        if !ex.groups.is_empty() && facts.groups.iter().any(|g| ex.groups.contains(g)) {
            return true;
        }
        if let (Some(set), Some(h)) = (&self.exempt_hosts[rule], &facts.host) {
            if set.is_match(h) {
                return true;
            }
        }
        false
    }

    /// The winning rule for `facts`, if any: the most specific match (sha256, then
    /// path/script/package, then name); at equal specificity `allow` wins, then the stronger
    /// action, then the earlier rule. Exempted rules do not match.
    pub fn evaluate(&self, facts: &Facts) -> Option<Decision> {
        self.evaluate_per_user(facts).0
    }

    /// [`Policy::evaluate`], and whether the answer depends on the user: true when a rule
    /// that matched the program exempts users or groups or has an exception granted, so that
    /// another user could get another answer for the same file.
    pub fn evaluate_per_user(&self, facts: &Facts) -> (Option<Decision>, bool) {
        let mut best: Option<(u8, u8, Reverse<usize>, Decision)> = None;
        let mut per_user = false;
        let mut consider =
            |this: &Policy, rule: u32, pattern: u32, selector: SelectorKind, subject: Subject| {
                let rule = rule as usize;
                per_user |= this.per_user(rule);
                let action = this.rules[rule].action;
                let key = (selector.specificity(), action.strength(), Reverse(rule));
                if let Some((s, a, r, _)) = &best {
                    if (*s, *a, *r) >= key {
                        return;
                    }
                }
                if this.exempt(rule, facts) {
                    return;
                }
                best = Some((
                    key.0,
                    key.1,
                    key.2,
                    Decision {
                        rule,
                        action,
                        selector,
                        pattern: pattern as usize,
                        subject,
                    },
                ));
            };
        for (digest, subject) in [
            (&facts.exe_sha256, Subject::Exe),
            (&facts.script_sha256, Subject::Script),
        ] {
            if let Some(hits) = digest.as_ref().and_then(|d| self.sha256.get(d)) {
                for &(r, p) in hits {
                    consider(self, r, p, SelectorKind::Sha256, subject);
                }
            }
        }
        for (path, index, kind, subject) in [
            (
                &facts.exe_path,
                &self.paths,
                SelectorKind::Path,
                Subject::Exe,
            ),
            (
                &facts.script_path,
                &self.scripts,
                SelectorKind::Script,
                Subject::Script,
            ),
        ] {
            if let Some(path) = path {
                if index.owners.is_empty() {
                    continue;
                }
                let cand = Candidate::new(path);
                for g in index.set.matches_candidate(&cand) {
                    let (r, p) = index.owners[g];
                    consider(self, r, p, kind, subject);
                }
            }
        }
        if let Some(cs) = &self.content {
            for (content, subject) in [
                (&facts.exe_content, Subject::Exe),
                (&facts.script_content, Subject::Script),
            ] {
                let Some(m) = content else { continue };
                if m.searcher() != cs.fingerprint() {
                    continue;
                }
                let Some(format) = m.format() else { continue };
                for fam in &cs.families {
                    if fam.formats.contains(&format) && fam.patterns.iter().all(|&p| m.has(p)) {
                        consider(self, fam.rule, 0, SelectorKind::Contains, subject);
                    }
                }
            }
        }
        for (path, index) in [
            (&facts.config_path, &self.configs),
            (&facts.config_home_path, &self.home_configs),
        ] {
            if let Some(path) = path {
                if index.owners.is_empty() {
                    continue;
                }
                for g in index.set.matches(path) {
                    let (r, p) = index.owners[g];
                    consider(self, r, p, SelectorKind::Config, Subject::Config);
                }
            }
        }
        for (i, pkg) in facts.packages.iter().enumerate() {
            if let Some(hits) = self.packages.get(pkg) {
                for &(r, p) in hits {
                    consider(self, r, p, SelectorKind::Package, Subject::Package(i));
                }
            }
        }
        for (i, name) in facts.names.iter().enumerate() {
            if let Some(hits) = self.names.get(name) {
                for &(r, p) in hits {
                    consider(self, r, p, SelectorKind::Name, Subject::Name(i));
                }
            }
        }
        (best.map(|b| b.3), per_user)
    }

    /// Whether `d` is carried out on `today`: monitor mode and a future `enforce_from` turn
    /// enforcing actions into reports.
    pub fn enforcement(&self, d: &Decision, today: Date) -> Enforcement {
        if !d.action.is_enforcing() {
            return Enforcement::ReportOnly;
        }
        self.rule_enforcement(d.rule, today)
    }

    /// Whether rule `rule` (an index into [`Policy::rules`]) changes anything on `today`,
    /// whatever its action: `Monitor` in monitor mode, `NotYet` before its `enforce_from`, else
    /// `Enforced` (used for `on_install = "quarantine"`).
    pub fn rule_enforcement(&self, rule: usize, today: Date) -> Enforcement {
        if self.info.mode == Mode::Monitor {
            return Enforcement::Monitor;
        }
        match self.rules[rule].enforce_from {
            Some(from) if today < from => Enforcement::NotYet(from),
            _ => Enforcement::Enforced,
        }
    }

    /// Spell out a decision with its evidence.
    pub fn evidence(&self, d: &Decision, facts: &Facts) -> Evidence {
        let rule = &self.rules[d.rule];
        let sel = &rule.selectors;
        let pattern = match d.selector {
            SelectorKind::Sha256 => sel.sha256[d.pattern].to_string(),
            SelectorKind::Path => sel.paths[d.pattern].clone(),
            SelectorKind::Script => sel.scripts[d.pattern].clone(),
            SelectorKind::Package => sel.packages[d.pattern].to_string(),
            SelectorKind::Name => sel.names[d.pattern].clone(),
            SelectorKind::Contains => format!(
                "contains_all [{}] in {}",
                sel.contains_all
                    .iter()
                    .map(|s| format!("\"{s}\""))
                    .collect::<Vec<_>>()
                    .join(", "),
                sel.contains_in
                    .iter()
                    .map(|f| f.as_str())
                    .collect::<Vec<_>>()
                    .join("/")
            ),
            SelectorKind::Config => sel.configs[d.pattern].clone(),
        };
        let value = match (d.selector, d.subject) {
            (SelectorKind::Sha256, Subject::Exe) => facts.exe_sha256.map(|h| h.to_string()),
            (SelectorKind::Sha256, Subject::Script) => facts.script_sha256.map(|h| h.to_string()),
            (_, Subject::Exe) => facts.exe_path.as_ref().map(|p| p.display().to_string()),
            (_, Subject::Script) => facts.script_path.as_ref().map(|p| p.display().to_string()),
            (_, Subject::Package(i)) => facts.packages.get(i).map(|p| p.to_string()),
            (_, Subject::Name(i)) => facts.names.get(i).cloned(),
            (_, Subject::Config) => facts.config_path.as_ref().map(|p| p.display().to_string()),
        }
        .unwrap_or_default();
        Evidence {
            rule_id: rule.id.clone(),
            action: rule.action,
            selector: d.selector,
            pattern,
            value,
        }
    }

    /// The text shown to the employee for a rule: the rule's message, else the policy's.
    pub fn message_for<'a>(&'a self, rule: &'a Rule) -> Option<&'a str> {
        rule.message.as_deref().or(self.info.message.as_deref())
    }
}

/// Values for `%placeholder%` expansion in messages and URLs.
#[derive(Debug, Clone, Default)]
pub struct PlaceholderValues<'a> {
    /// `%rule_id%`
    pub rule_id: &'a str,
    /// `%sha256%`
    pub sha256: &'a str,
    /// `%path%`
    pub path: &'a str,
    /// `%host%`
    pub host: &'a str,
    /// `%user%`
    pub user: &'a str,
}

/// Replace `%rule_id%`, `%sha256%`, `%path%`, `%host%` and `%user%` in `template`. With
/// `url_encode`, the values are percent-encoded (for `more_info_url`).
pub fn expand_placeholders(template: &str, v: &PlaceholderValues<'_>, url_encode: bool) -> String {
    let mut out = template.to_string();
    for (key, val) in [
        ("%rule_id%", v.rule_id),
        ("%sha256%", v.sha256),
        ("%path%", v.path),
        ("%host%", v.host),
        ("%user%", v.user),
    ] {
        if out.contains(key) {
            let val = if url_encode {
                percent_encoding::utf8_percent_encode(val, URL_RESERVED).to_string()
            } else {
                val.to_string()
            };
            out = out.replace(key, &val);
        }
    }
    out
}

/// Everything but RFC 3986's unreserved characters (letters, digits, `-`, `_`, `.`, `~`).
const URL_RESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
