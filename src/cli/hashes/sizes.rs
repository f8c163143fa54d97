//! `interdict hashes sizes`: add `size=BYTES` to the lines of an existing hash list without
//! downloading the packages again (under `cli`, like [`super::fetch`], so that the agent, which
//! never imports `cli`, cannot use it).
//!
//! For each line named `npm:PKG@VERSION:PATH` (what `interdict hashes fetch` prints), the
//! release's tarball URL comes from the package's abbreviated packument (one request per
//! package), then only the beginning of the tarball is downloaded (an HTTP Range request; a
//! server that ignores the range is read only that far): decompressed, it holds the tar
//! header of `PATH`, which gives the file's size. The native Claude Code packages have their
//! binary as the first entry, so a few KiB per release are enough. When `PATH` comes after
//! entries whose data lies beyond the largest prefix asked for ([`MAX_PREFIX`]), the line is
//! left without a size and a warning says so: a size is never guessed.
//!
//! What the prefix gives cannot be checked against the registry's integrity value (that needs
//! the whole tarball): the size comes from the same registry over the same HTTPS as the
//! packument, and a full `interdict hashes fetch` both verifies and sizes.

use std::collections::HashMap;
use std::io::{self, Read};

use interdict_policy::Sha256;

use super::fetch::{NpmPackument, Registries, RegistryError};

/// The first prefix asked for: the first tar header and then some.
pub const FIRST_PREFIX: u64 = 4096;
/// The largest prefix asked for (each retry asks for 16 times more, up to this).
pub const MAX_PREFIX: u64 = 1 << 20;
/// At most this much is decompressed from a prefix; what lies beyond is treated as not
/// received (the walk then asks for more, or says it cannot).
pub const MAX_DECOMPRESSED: usize = 64 << 20;

/// What the beginning of a `.tar.gz` says about one of its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrefixFind {
    /// The regular file is there, with this size.
    Size(u64),
    /// The prefix ends before the file's header (inside an earlier entry's data, or at a header
    /// boundary): a longer prefix may tell.
    NeedMore {
        /// Bytes of tar data the prefix decompressed to.
        decompressed: u64,
    },
    /// The whole archive was read and holds no regular file of that path.
    Absent,
    /// The archive cannot be read.
    Damaged(String),
}

/// Find regular file `path` (exactly as `interdict hashes fetch` names it: the tar path, e.g.
/// `package/claude`) in the beginning `prefix` of a gzip-compressed tar; `complete` when the
/// prefix is the whole file. Earlier entries are skipped only when their data lies inside the
/// prefix; nothing is guessed.
pub fn tar_gz_entry_size(prefix: &[u8], complete: bool, path: &str) -> PrefixFind {
    let mut tar = Vec::new();
    let mut gz = flate2::read::GzDecoder::new(prefix);
    let mut buf = vec![0u8; 64 * 1024];
    let mut ended = false;
    let mut damaged = None;
    while tar.len() < MAX_DECOMPRESSED {
        let room = (MAX_DECOMPRESSED - tar.len()).min(buf.len());
        match gz.read(&mut buf[..room]) {
            Ok(0) => {
                ended = true;
                break;
            }
            Ok(n) => tar.extend_from_slice(&buf[..n]),
            Err(e) => {
                // A prefix ends inside the compressed stream: what came before is good.
                damaged = Some(e.to_string());
                break;
            }
        }
    }
    // The tar data is whole only when the whole download decompressed to its end.
    let whole = complete && ended;
    let decompressed = tar.len() as u64;
    let more_or = |what: String| {
        if whole {
            PrefixFind::Damaged(what)
        } else if complete {
            // The whole download did not decompress: a damaged gzip stream.
            PrefixFind::Damaged(damaged.clone().unwrap_or(what))
        } else {
            PrefixFind::NeedMore { decompressed }
        }
    };
    let mut archive = tar::Archive::new(io::Cursor::new(&tar[..]));
    let entries = match archive.entries() {
        Ok(e) => e,
        Err(e) => return more_or(e.to_string()),
    };
    for (i, entry) in entries.enumerate() {
        if i >= super::fetch::MAX_ENTRIES {
            return PrefixFind::Damaged(format!("more than {} entries", super::fetch::MAX_ENTRIES));
        }
        let entry = match entry {
            Ok(e) => e,
            Err(e) => return more_or(e.to_string()),
        };
        if entry.header().entry_type() == tar::EntryType::Regular
            && String::from_utf8_lossy(&entry.path_bytes()) == path
        {
            return PrefixFind::Size(entry.size());
        }
    }
    // The entries ended: at the archive's end only when the data was whole (a prefix may
    // stop exactly at a header boundary).
    if whole {
        PrefixFind::Absent
    } else if complete {
        PrefixFind::Damaged(damaged.unwrap_or_else(|| "truncated gzip stream".into()))
    } else {
        PrefixFind::NeedMore { decompressed }
    }
}

/// `npm:PKG@VERSION:PATH` -> (PKG, VERSION, PATH).
pub fn parse_npm_name(name: &str) -> Option<(&str, &str, &str)> {
    let rest = name.strip_prefix("npm:")?;
    // `@scope/name@1.0`: the version's `@` is the first one after the first character.
    let at = rest.get(1..)?.find('@')? + 1;
    let (pkg, tail) = (&rest[..at], &rest[at + 1..]);
    let (version, path) = tail.split_once(':')?;
    (!pkg.is_empty() && !version.is_empty() && !path.is_empty()).then_some((pkg, version, path))
}

/// How a run went.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SizesSummary {
    /// Digest lines given a size.
    pub sized: usize,
    /// Digest lines that already had one (left as they were).
    pub already: usize,
    /// Digest lines left without a size (each with a warning).
    pub left: usize,
    /// Tarball requests made.
    pub requests: usize,
    /// Requests the server answered with a range (206).
    pub ranged: usize,
    /// Bytes of tarballs downloaded.
    pub bytes: u64,
    /// Packuments fetched.
    pub packuments: usize,
    /// Bytes of packuments downloaded.
    pub packument_bytes: u64,
}

/// One digest line's parts: the digest and the file's name (`HEX  NAME`, `HEX *NAME`).
fn digest_line(text: &str) -> Option<(Sha256, &str)> {
    let hex = text.split_whitespace().next()?;
    let d = Sha256::from_hex(hex)?;
    let rest = text[hex.len()..].trim_start();
    Some((d, rest.strip_prefix('*').unwrap_or(rest)))
}

/// The size of `path` in `url` (a `.tar.gz`), from as short a prefix as will do.
fn size_by_prefix(
    reg: &Registries,
    url: &str,
    path: &str,
    sum: &mut SizesSummary,
) -> Result<u64, String> {
    let mut n = FIRST_PREFIX;
    loop {
        let p = reg.get_prefix(url, n).map_err(|e| e.to_string())?;
        sum.requests += 1;
        sum.ranged += usize::from(p.ranged);
        sum.bytes += p.bytes.len() as u64;
        match tar_gz_entry_size(&p.bytes, p.complete, path) {
            PrefixFind::Size(s) => return Ok(s),
            PrefixFind::Absent => return Err(format!("{url} holds no file `{path}`")),
            PrefixFind::Damaged(e) => return Err(format!("{url}: unreadable archive: {e}")),
            PrefixFind::NeedMore { decompressed } if n >= MAX_PREFIX => {
                return Err(format!(
                    "`{path}` is not among the entries in the first {} KiB of {url} ({decompressed} bytes of tar): earlier entries' data lies beyond it; `interdict hashes fetch` downloads the whole tarball",
                    n / 1024
                ))
            }
            PrefixFind::NeedMore { .. } => n = (n * 16).min(MAX_PREFIX),
        }
    }
}

/// What is to be done with one line.
enum Plan {
    /// Copied as it is (blank, comment, or already sized).
    Copy,
    /// Copied as it is, with a warning: it cannot be sized.
    Cannot(String),
    /// Sized from the beginning of the tarball at `url`.
    Fetch {
        /// The file's name in the list.
        name: String,
        /// The tarball.
        url: String,
        /// The file's path in it.
        path: String,
    },
}

/// What to do with one line (`trimmed`: the line without surrounding blanks), fetching each
/// package's packument the first time it is named.
fn plan_line(
    reg: &Registries,
    trimmed: &str,
    packuments: &mut HashMap<String, Result<NpmPackument, String>>,
    sum: &mut SizesSummary,
) -> Plan {
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return Plan::Copy;
    }
    let Some((_, name)) = digest_line(trimmed) else {
        return Plan::Cannot("not a `SHA256  NAME` line".into());
    };
    if name.is_empty() {
        return Plan::Cannot("a bare digest: no `npm:` name to size".into());
    }
    if name
        .split_whitespace()
        .last()
        .is_some_and(|t| t.starts_with("size="))
    {
        sum.already += 1;
        return Plan::Copy;
    }
    let Some((pkg, version, path)) = parse_npm_name(name) else {
        return Plan::Cannot(format!("`{name}` is not named `npm:PACKAGE@VERSION:PATH`"));
    };
    let doc = packuments.entry(pkg.to_string()).or_insert_with(|| {
        sum.packuments += 1;
        let doc = reg.npm_packument(pkg).map_err(|e| e.to_string());
        sum.packument_bytes += doc.as_ref().map_or(0, |d| d.bytes);
        doc
    });
    let url = match doc {
        Ok(doc) => doc.artifact(version).map(|a| a.url),
        Err(e) => return Plan::Cannot(format!("{name}: {e}")),
    };
    match url {
        Ok(url) => Plan::Fetch {
            name: name.to_string(),
            url,
            path: path.to_string(),
        },
        Err(e) => Plan::Cannot(format!("{name}: {e}")),
    }
}

/// Copy the hash list `text` (named `file` in messages) to `out`, adding `  size=BYTES` to each
/// `npm:` digest line without a size; every other line is copied unchanged. A digest line left
/// without a size gets a warning on `log`. Up to `jobs` tarball prefixes are fetched at once
/// (each request waits mostly on the registry); the output keeps the list's order.
pub fn add_sizes(
    reg: &Registries,
    file: &str,
    text: &str,
    jobs: usize,
    out: &mut impl io::Write,
    log: &mut impl io::Write,
) -> io::Result<SizesSummary> {
    let mut sum = SizesSummary::default();
    let mut packuments: HashMap<String, Result<NpmPackument, String>> = HashMap::new();
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let plans: Vec<Plan> = lines
        .iter()
        .map(|l| plan_line(reg, l.trim(), &mut packuments, &mut sum))
        .collect();
    // The prefixes, fetched by `jobs` threads taking the next line to size in turn.
    let todo: Vec<usize> = (0..plans.len())
        .filter(|&i| matches!(plans[i], Plan::Fetch { .. }))
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<(usize, Result<u64, String>, SizesSummary)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..jobs.clamp(1, 64).min(todo.len().max(1)))
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&i) = todo.get(k) else {
                            return done;
                        };
                        let Plan::Fetch { url, path, .. } = &plans[i] else {
                            continue;
                        };
                        let mut part = SizesSummary::default();
                        let r = size_by_prefix(reg, url, path, &mut part);
                        done.push((i, r, part));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("a sizing thread panicked"))
            .collect()
    });
    let mut sized: HashMap<usize, Result<u64, String>> = HashMap::new();
    for (i, r, part) in results {
        sum.requests += part.requests;
        sum.ranged += part.ranged;
        sum.bytes += part.bytes;
        sized.insert(i, r);
    }
    for (i, (line, plan)) in lines.iter().zip(&plans).enumerate() {
        let body = line.trim_end_matches(['\n', '\r']);
        let ending = &line[body.len()..];
        let why = match plan {
            Plan::Copy => {
                out.write_all(line.as_bytes())?;
                continue;
            }
            Plan::Cannot(why) => why.clone(),
            Plan::Fetch { name, .. } => match sized.remove(&i) {
                Some(Ok(size)) => {
                    sum.sized += 1;
                    write!(out, "{}  size={size}{ending}", body.trim_end())?;
                    continue;
                }
                Some(Err(why)) => format!("{name}: {why}"),
                None => format!("{name}: not sized"),
            },
        };
        sum.left += 1;
        writeln!(log, "{file}:{}: warning: {why}; left without a size", i + 1)?;
        out.write_all(line.as_bytes())?;
    }
    Ok(sum)
}

/// `interdict hashes sizes` arguments.
#[derive(Debug, clap::Args)]
pub struct SizesArgs {
    /// The hash list (`policies/hashes/*.sha256`); `-` reads standard input.
    #[arg(value_name = "FILE")]
    pub file: std::path::PathBuf,
    /// The npm registry.
    #[arg(long, value_name = "URL", default_value = super::fetch::NPM_REGISTRY)]
    pub npm_registry: String,
    /// Trust the CAs in this PEM file (default: `$SSL_CERT_FILE`, else the system's bundle).
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<std::path::PathBuf>,
    /// Tarball prefixes fetched at once (1 to 64).
    #[arg(long, value_name = "N", default_value_t = 8,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,
}

/// Run `interdict hashes sizes`: the exit code (0 every digest line has a size, 1 some line
/// was left without one, 2 error).
pub fn sizes_command(args: &SizesArgs) -> anyhow::Result<u8> {
    let (name, text) = if args.file.as_os_str() == "-" {
        let mut s = String::new();
        io::stdin().read_to_string(&mut s)?;
        ("(stdin)".to_string(), s)
    } else {
        let name = args.file.display().to_string();
        match std::fs::read_to_string(&args.file) {
            Ok(s) => (name, s),
            Err(e) => {
                eprintln!(
                    "interdict: error: cannot read {name}: {}",
                    crate::io_reason(&e)
                );
                return Ok(crate::cli::exit::ERROR);
            }
        }
    };
    let reg = Registries::new(
        &args.npm_registry,
        super::fetch::PYPI,
        args.ca_file.as_deref(),
    )
    .map_err(|e: RegistryError| anyhow::anyhow!(e))?;
    let started = std::time::Instant::now();
    let stdout = io::stdout();
    let sum = add_sizes(
        &reg,
        &name,
        &text,
        usize::from(args.jobs),
        &mut io::BufWriter::new(stdout.lock()),
        &mut io::stderr().lock(),
    )?;
    eprintln!(
        "{} line(s) sized, {} already sized, {} left without a size; {} packument(s) ({:.1} KiB), {} tarball request(s) ({} answered with a range), {:.1} KiB of tarballs in {:.1} s",
        sum.sized,
        sum.already,
        sum.left,
        sum.packuments,
        sum.packument_bytes as f64 / 1024.0,
        sum.requests,
        sum.ranged,
        sum.bytes as f64 / 1024.0,
        started.elapsed().as_secs_f64()
    );
    Ok(if sum.left > 0 {
        crate::cli::exit::VIOLATIONS
    } else {
        crate::cli::exit::OK
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npm_names() {
        assert_eq!(
            parse_npm_name("npm:@anthropic-ai/claude-code-linux-x64@2.1.160:package/claude"),
            Some((
                "@anthropic-ai/claude-code-linux-x64",
                "2.1.160",
                "package/claude"
            ))
        );
        assert_eq!(
            parse_npm_name("npm:left-pad@1.3.0:package/index.js"),
            Some(("left-pad", "1.3.0", "package/index.js"))
        );
        for bad in [
            "pypi:claude-agent-sdk@0.2.106:x.whl:claude_agent_sdk/_bundled/claude",
            "npm:left-pad@1.3.0",
            "npm:@scope/x:package/a",
            "npm:x@:package/a",
            "npm:x@1:",
            "claude",
        ] {
            assert_eq!(parse_npm_name(bad), None, "{bad}");
        }
    }

    /// A tar.gz made by the `tar` crate: `first` (of `first_len` pseudo-random bytes, which do
    /// not compress), then `package/claude` of 5 bytes.
    fn tgz(first_len: usize) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |path: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o755);
            h.set_cksum();
            b.append_data(&mut h, path, data).unwrap();
        };
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let noise: Vec<u8> = (0..first_len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        add("package/LICENSE.md", &noise);
        add("package/claude", b"hello");
        let tar = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        io::Write::write_all(&mut gz, &tar).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn earlier_entries_are_skipped_only_inside_the_prefix() {
        let whole = tgz(100_000);
        assert_eq!(
            tar_gz_entry_size(&whole, true, "package/claude"),
            PrefixFind::Size(5)
        );
        assert_eq!(
            tar_gz_entry_size(&whole, true, "package/LICENSE.md"),
            PrefixFind::Size(100_000)
        );
        assert_eq!(
            tar_gz_entry_size(&whole, true, "package/README.md"),
            PrefixFind::Absent
        );
        // The first entry's header is in the first KiB; the second's is not.
        let head = &whole[..1024];
        assert_eq!(
            tar_gz_entry_size(head, false, "package/LICENSE.md"),
            PrefixFind::Size(100_000)
        );
        assert!(
            matches!(
                tar_gz_entry_size(head, false, "package/claude"),
                PrefixFind::NeedMore { .. }
            ),
            "the second entry lies beyond the prefix: never guessed"
        );
        // Nor is a file absent from a prefix said to be absent.
        assert!(matches!(
            tar_gz_entry_size(head, false, "package/README.md"),
            PrefixFind::NeedMore { .. }
        ));
        // A whole download that is not a gzip stream is damaged.
        assert!(matches!(
            tar_gz_entry_size(b"not gzip at all", true, "package/claude"),
            PrefixFind::Damaged(_)
        ));
        let mut cut = whole.clone();
        cut.truncate(whole.len() - 100);
        assert!(matches!(
            tar_gz_entry_size(&cut, true, "package/README.md"),
            PrefixFind::Damaged(_)
        ));
    }

    #[test]
    fn lines_other_than_unsized_npm_digests_are_copied_unchanged() {
        let reg = Registries::new("http://127.0.0.1:9", "http://127.0.0.1:9", None).unwrap();
        let a = "a".repeat(64);
        let text = format!(
            "# comment\n\n{a}  npm:x@1:package/x  size=12\n{a}  claude\n{a}\nnot a digest\n"
        );
        let (mut out, mut log) = (Vec::new(), Vec::new());
        let sum = add_sizes(&reg, "h.sha256", &text, 4, &mut out, &mut log).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), text);
        let log = String::from_utf8(log).unwrap();
        assert_eq!((sum.already, sum.left, sum.sized), (1, 3, 0), "{log}");
        assert!(
            log.contains("h.sha256:4: warning: `claude` is not named `npm:PACKAGE@VERSION:PATH`")
                && log.contains("h.sha256:5: warning:")
                && log.contains("h.sha256:6: warning: not a `SHA256  NAME` line"),
            "{log}"
        );
    }
}
