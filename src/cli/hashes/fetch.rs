//! Release digests from the package registries: `interdict hashes fetch` (the command and its
//! registry client; under `cli` so that the agent, which never imports `cli`, cannot use it).
//!
//! For IT, on a machine with registry access (the agent never does this): download a package
//! with the registry's ordinary protocol (npm: the abbreviated packument, then the tarball;
//! PyPI: the JSON API, then the wheels), verify it against the registry's own integrity value
//! (npm `dist.integrity`, SHA-512; PyPI `digests.sha256`) and hash the files inside, streaming
//! (gzip + tar, zip) without writing anything to disk. What is printed is `sha256sum` lines for
//! the shipped hash lists (`policies/hashes/*.sha256`).
//!
//! Nothing from an archive is trusted before the whole download has matched its integrity
//! value: the caller gets the entries only then.

use std::cmp::Ordering;
use std::io::{self, Read};
use std::time::Duration;

use base64::Engine as _;
use interdict_policy::{ContentMatch, ContentSearcher, Sha256};
use serde::Deserialize;
use sha2::Digest as _;

/// The public npm registry.
pub const NPM_REGISTRY: &str = "https://registry.npmjs.org";
/// The public PyPI.
pub const PYPI: &str = "https://pypi.org";
/// At most this many entries are looked at in one archive; more is refused as damaged.
pub const MAX_ENTRIES: usize = 100_000;
/// The largest metadata document read (a packument or a PyPI JSON page).
const MAX_METADATA_BYTES: u64 = 64 * 1024 * 1024;

/// Everything that can go wrong, with the URL or spec it concerns.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The spec given on the command line cannot be read.
    #[error("`{spec}`: {reason}")]
    BadSpec {
        /// What was given.
        spec: String,
        /// Why it is not understood.
        reason: String,
    },
    /// The registry could not be reached or the transfer broke off.
    #[error("{url}: {reason}")]
    Http {
        /// The URL.
        url: String,
        /// What happened.
        reason: String,
    },
    /// The registry answered with an error status.
    #[error("{url}: HTTP {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The registry's metadata is not what its protocol says.
    #[error("{url}: unexpected metadata: {reason}")]
    Metadata {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// No release matches.
    #[error("{spec}: {reason}")]
    NotFound {
        /// The spec.
        spec: String,
        /// What is missing.
        reason: String,
    },
    /// The download does not match the registry's integrity value: nothing from it is used.
    #[error("{url}: integrity check failed: the registry says {expected}, the download is {actual}; nothing from it is used")]
    Integrity {
        /// The URL.
        url: String,
        /// The registry's value.
        expected: String,
        /// What was downloaded.
        actual: String,
    },
    /// The archive cannot be read.
    #[error("{url}: unreadable archive: {reason}")]
    Archive {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
}

/// Which registry, and which package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Package {
    /// An npm package (`@scope/name` or `name`).
    Npm(String),
    /// A PyPI project.
    Pypi(String),
}

/// Which releases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Releases {
    /// One version.
    Version(String),
    /// The registry's latest (npm `dist-tags.latest`, PyPI `info.version`).
    Latest,
    /// Every release (no pre-release) from this version on.
    AllSince(String),
}

/// `npm:NAME@WHICH` or `pypi:NAME@WHICH`, WHICH being a version, `latest` or
/// `all-since:VERSION`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// The package.
    pub package: Package,
    /// The releases.
    pub releases: Releases,
}

impl std::str::FromStr for Spec {
    type Err = RegistryError;

    fn from_str(s: &str) -> Result<Spec, RegistryError> {
        let bad = |reason: &str| RegistryError::BadSpec {
            spec: s.to_string(),
            reason: reason.to_string(),
        };
        let (eco, rest) = s
            .split_once(':')
            .ok_or_else(|| bad("expected npm:NAME@VERSION or pypi:NAME@VERSION"))?;
        // `@scope/name@1.0`: the version follows the last `@` after the first character.
        let at = rest[1.min(rest.len())..]
            .rfind('@')
            .map(|i| i + 1)
            .ok_or_else(|| bad("no @VERSION, @latest or @all-since:VERSION"))?;
        let (name, which) = (&rest[..at], &rest[at + 1..]);
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(bad("empty or blank package name"));
        }
        let releases = match which {
            "latest" => Releases::Latest,
            w => match w.strip_prefix("all-since:") {
                Some(v) if release_key(v).is_some() => Releases::AllSince(v.to_string()),
                Some(_) => return Err(bad("all-since: needs a release version like 2.1.160")),
                None if !w.is_empty() && !w.contains(char::is_whitespace) => {
                    Releases::Version(w.to_string())
                }
                None => return Err(bad("empty version")),
            },
        };
        let package = match eco {
            "npm" => Package::Npm(name.to_string()),
            "pypi" => Package::Pypi(name.to_string()),
            other => {
                return Err(bad(&format!(
                    "unknown registry `{other}` (expected npm or pypi)"
                )))
            }
        };
        Ok(Spec { package, releases })
    }
}

/// The numeric parts of a release version (`2.1.332` -> [2, 1, 332]); `None` for pre-releases
/// and anything else.
pub fn release_key(v: &str) -> Option<Vec<u64>> {
    v.split('.').map(|p| p.parse::<u64>().ok()).collect()
}

fn cmp_release(a: &[u64], b: &[u64]) -> Ordering {
    let n = a.len().max(b.len());
    (0..n)
        .map(|i| a.get(i).unwrap_or(&0).cmp(b.get(i).unwrap_or(&0)))
        .find(|o| o.is_ne())
        .unwrap_or(Ordering::Equal)
}

/// The registry's integrity value for a download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Integrity {
    /// SHA-512 (npm `dist.integrity` `sha512-BASE64`).
    Sha512(Vec<u8>),
    /// SHA-256 (PyPI `digests.sha256`).
    Sha256(Vec<u8>),
}

impl Integrity {
    fn describe(&self) -> String {
        match self {
            Integrity::Sha512(d) => {
                format!(
                    "sha512-{}",
                    base64::engine::general_purpose::STANDARD.encode(d)
                )
            }
            Integrity::Sha256(d) => format!("sha256 {}", hex(d)),
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// How an artifact is packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packing {
    /// A gzip-compressed tar (npm).
    TarGz,
    /// A zip (wheels).
    Zip,
}

/// One file to download: a tarball or a wheel of one release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// `npm:NAME@VERSION` or `pypi:NAME@VERSION:FILENAME`.
    pub label: String,
    /// The version.
    pub version: String,
    /// Where it is.
    pub url: String,
    /// The registry's integrity value.
    pub integrity: Integrity,
    /// Its packing.
    pub packing: Packing,
}

/// One regular file inside an artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its path in the archive.
    pub path: String,
    /// SHA-256 of its bytes.
    pub sha256: Sha256,
    /// Its size.
    pub size: u64,
    /// Whether the archive marks it executable.
    pub executable: bool,
    /// What it holds, when signatures were looked for.
    pub content: Option<ContentMatch>,
}

/// An artifact downloaded and verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// Bytes downloaded.
    pub bytes: u64,
    /// Every regular file inside, in archive order.
    pub entries: Vec<Entry>,
}

/// The beginning of a download ([`Registries::get_prefix`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefix {
    /// The bytes received, from the first.
    pub bytes: Vec<u8>,
    /// True when the server honoured the Range request (206), false when it sent the whole
    /// file (200) and the transfer was cut off.
    pub ranged: bool,
    /// True when `bytes` is the whole file.
    pub complete: bool,
}

/// A registry client.
#[derive(Debug, Clone)]
pub struct Registries {
    /// The npm registry's base URL.
    pub npm: String,
    /// PyPI's base URL.
    pub pypi: String,
    agent: ureq::Agent,
}

/// Where the system keeps its CA bundle (Debian/Ubuntu, Fedora/RHEL, Alpine/macOS).
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// The CA bundle to trust: `ca_file`, else `$SSL_CERT_FILE`, else the system's bundle (which
/// holds a company's TLS-inspection CA where there is one), else none (the public web roots).
fn ca_bundle(ca_file: Option<&std::path::Path>) -> Option<std::path::PathBuf> {
    if let Some(p) = ca_file {
        return Some(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("SSL_CERT_FILE") {
        return Some(p.into());
    }
    SYSTEM_CA_BUNDLES
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.is_file())
}

#[derive(Deserialize)]
struct Packument {
    #[serde(rename = "dist-tags", default)]
    dist_tags: std::collections::HashMap<String, String>,
    #[serde(default)]
    versions: std::collections::HashMap<String, NpmVersion>,
}

/// An npm package's abbreviated packument, as [`Registries::npm_packument`] fetched it.
pub struct NpmPackument {
    name: String,
    url: String,
    doc: Packument,
    /// Bytes of the packument downloaded.
    pub bytes: u64,
}

impl NpmPackument {
    /// Release `v`'s tarball, with the registry's sha512 integrity value (a release without
    /// one is refused: its tarball could not be verified).
    pub fn artifact(&self, v: &str) -> Result<Artifact, RegistryError> {
        let name = &self.name;
        let Some(meta) = self.doc.versions.get(v) else {
            return Err(RegistryError::NotFound {
                spec: format!("npm:{name}"),
                reason: format!("no version {v}"),
            });
        };
        let integrity = meta
            .dist
            .integrity
            .as_deref()
            .and_then(|i| i.split_whitespace().find_map(|x| x.strip_prefix("sha512-")))
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .ok_or_else(|| RegistryError::Metadata {
                url: self.url.clone(),
                reason: format!(
                    "{name}@{v} has no sha512 integrity value: refusing to trust its tarball"
                ),
            })?;
        Ok(Artifact {
            label: format!("npm:{name}@{v}"),
            version: v.to_string(),
            url: join_url(&self.url, &meta.dist.tarball),
            integrity: Integrity::Sha512(integrity),
            packing: Packing::TarGz,
        })
    }
}

#[derive(Deserialize)]
struct NpmVersion {
    dist: NpmDist,
}

#[derive(Deserialize)]
struct NpmDist {
    tarball: String,
    integrity: Option<String>,
}

#[derive(Deserialize)]
struct PypiProject {
    info: PypiInfo,
    #[serde(default)]
    releases: std::collections::HashMap<String, Vec<PypiFile>>,
}

#[derive(Deserialize)]
struct PypiInfo {
    version: String,
}

#[derive(Deserialize)]
struct PypiFile {
    filename: String,
    url: String,
    digests: PypiDigests,
    packagetype: String,
    #[serde(default)]
    yanked: bool,
}

#[derive(Deserialize)]
struct PypiDigests {
    sha256: String,
}

/// Resolve `href` against `base` (RFC 3986, for the forms registries use: absolute,
/// scheme-relative, origin-relative and `../`-relative).
pub fn join_url(base: &str, href: &str) -> String {
    if href.starts_with("http://") || href.starts_with("https://") {
        return href.to_string();
    }
    let (scheme, rest) = base.split_once("://").unwrap_or(("https", base));
    if let Some(h) = href.strip_prefix("//") {
        return format!("{scheme}://{h}");
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let path = path.split(['?', '#']).next().unwrap_or("/");
    let mut segs: Vec<&str> = if href.starts_with('/') {
        Vec::new()
    } else {
        let mut s: Vec<&str> = path.split('/').skip(1).collect();
        s.pop();
        s
    };
    let (href_path, tail) = match href.find(['?', '#']) {
        Some(i) => (&href[..i], &href[i..]),
        None => (href, ""),
    };
    for seg in href_path.trim_start_matches('/').split('/') {
        match seg {
            "." => {}
            ".." => {
                segs.pop();
            }
            s => segs.push(s),
        }
    }
    format!("{scheme}://{authority}/{}{tail}", segs.join("/"))
}

/// A reader that counts what passes through it.
struct Counted<R> {
    inner: R,
    n: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

/// A reader that hashes what passes through it and counts it.
struct Tee<R, H> {
    inner: R,
    hasher: H,
    n: u64,
}

impl<R: Read, H: sha2::Digest> Read for Tee<R, H> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
}

/// Unpack an artifact from `reader` while `hasher` takes in every byte of the download (read to
/// its end whatever the archive's state): the entries, the bytes read and the digest.
fn unpack_hashing<H: sha2::Digest>(
    a: &Artifact,
    reader: impl Read,
    hasher: H,
    searcher: Option<&ContentSearcher>,
) -> (Result<Vec<Entry>, RegistryError>, u64, Vec<u8>) {
    let mut tee = Tee {
        inner: reader,
        hasher,
        n: 0,
    };
    let unpacked = unpack(&a.url, a.packing, &mut tee, searcher);
    let drained = io::copy(&mut tee, &mut io::sink()).map_err(|e| RegistryError::Http {
        url: a.url.clone(),
        reason: e.to_string(),
    });
    (drained.and(unpacked), tee.n, tee.hasher.finalize().to_vec())
}

impl Registries {
    /// A client for these registries, trusting the CAs of `ca_file` (PEM), else of the system's
    /// bundle, else the public web roots.
    pub fn new(
        npm: &str,
        pypi: &str,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Registries, RegistryError> {
        use ureq::tls::{PemItem, RootCerts, TlsConfig};
        let mut tls = TlsConfig::builder();
        if let Some(bundle) = ca_bundle(ca_file) {
            let bad = |reason: String| RegistryError::BadSpec {
                spec: bundle.display().to_string(),
                reason,
            };
            let pem = std::fs::read(&bundle).map_err(|e| bad(crate::io_reason(&e)))?;
            let mut certs = Vec::new();
            for item in ureq::tls::parse_pem(&pem) {
                if let PemItem::Certificate(c) = item.map_err(|e| bad(e.to_string()))? {
                    certs.push(c);
                }
            }
            if certs.is_empty() {
                return Err(bad("no certificate in this CA bundle".into()));
            }
            tls = tls.root_certs(RootCerts::new_with_certs(&certs));
        }
        let agent = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(120)))
            .timeout_recv_body(Some(Duration::from_secs(3600)))
            .http_status_as_error(false)
            .user_agent(concat!("interdict/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls.build())
            .build()
            .into();
        Ok(Registries {
            npm: npm.trim_end_matches('/').to_string(),
            pypi: pypi.trim_end_matches('/').to_string(),
            agent,
        })
    }

    fn get(&self, url: &str, accept: &str) -> Result<ureq::Body, RegistryError> {
        let resp = self
            .agent
            .get(url)
            .header("Accept", accept)
            .call()
            .map_err(|e| RegistryError::Http {
                url: url.to_string(),
                reason: e.to_string(),
            })?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(RegistryError::Status {
                url: url.to_string(),
                status,
            });
        }
        Ok(resp.into_body())
    }

    /// The first `n` bytes of `url`: asked for with `Range: bytes=0-(n-1)`; a server that
    /// ignores the range and sends the whole file is read only up to `n` bytes, and the
    /// connection is then dropped.
    pub fn get_prefix(&self, url: &str, n: u64) -> Result<Prefix, RegistryError> {
        let http = |reason: String| RegistryError::Http {
            url: url.to_string(),
            reason,
        };
        let resp = self
            .agent
            .get(url)
            .header("Accept", "application/octet-stream")
            .header("Range", &format!("bytes=0-{}", n.saturating_sub(1)))
            .call()
            .map_err(|e| http(e.to_string()))?;
        let status = resp.status().as_u16();
        // `bytes 0-END/TOTAL` (TOTAL may be `*`): anything else is not the prefix asked for.
        let total = match status {
            200 => None,
            206 => {
                let cr = resp
                    .headers()
                    .get("content-range")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                let (range, total) = cr
                    .strip_prefix("bytes ")
                    .and_then(|r| r.split_once('/'))
                    .ok_or_else(|| {
                        http(format!("206 with Content-Range `{cr}`: not a byte range"))
                    })?;
                if !range.starts_with("0-") {
                    return Err(http(format!(
                        "asked for the first {n} bytes, the server sent `{cr}`"
                    )));
                }
                total.parse::<u64>().ok()
            }
            status => {
                return Err(RegistryError::Status {
                    url: url.to_string(),
                    status,
                })
            }
        };
        let mut bytes = Vec::new();
        // A range is read to its end (so that the connection is reused); a whole file only as
        // far as asked.
        let ranged = status == 206;
        resp.into_body()
            .into_reader()
            .take(if ranged { n + 1 } else { n })
            .read_to_end(&mut bytes)
            .map_err(|e| http(e.to_string()))?;
        let got = bytes.len() as u64;
        if got > n {
            return Err(http(format!(
                "asked for the first {n} bytes, the server sent more"
            )));
        }
        Ok(Prefix {
            bytes,
            ranged,
            complete: match total {
                Some(t) => got >= t,
                None => status == 200 && got < n,
            },
        })
    }

    fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        accept: &str,
    ) -> Result<T, RegistryError> {
        let body = self.get(url, accept)?;
        let reader = body.into_with_config().limit(MAX_METADATA_BYTES).reader();
        serde_json::from_reader(reader).map_err(|e| RegistryError::Metadata {
            url: url.to_string(),
            reason: e.to_string(),
        })
    }

    /// The artifacts a spec names: one tarball per npm release, every wheel of each PyPI
    /// release (sdists hold no binaries).
    pub fn resolve(&self, spec: &Spec) -> Result<Vec<Artifact>, RegistryError> {
        match &spec.package {
            Package::Npm(name) => self.resolve_npm(name, &spec.releases),
            Package::Pypi(name) => self.resolve_pypi(name, &spec.releases),
        }
    }

    fn pick(
        label: &str,
        versions: Vec<String>,
        latest: Option<&str>,
        which: &Releases,
    ) -> Result<Vec<String>, RegistryError> {
        let not_found = |reason: String| RegistryError::NotFound {
            spec: label.to_string(),
            reason,
        };
        match which {
            Releases::Version(v) => {
                if versions.iter().any(|x| x == v) {
                    Ok(vec![v.clone()])
                } else {
                    Err(not_found(format!("no version {v}")))
                }
            }
            Releases::Latest => latest
                .map(|l| vec![l.to_string()])
                .ok_or_else(|| not_found("the registry names no latest version".into())),
            Releases::AllSince(since) => {
                let since = release_key(since).unwrap_or_default();
                let mut out: Vec<(Vec<u64>, String)> = versions
                    .into_iter()
                    .filter_map(|v| release_key(&v).map(|k| (k, v)))
                    .filter(|(k, _)| cmp_release(k, &since).is_ge())
                    .collect();
                out.sort_by(|a, b| cmp_release(&a.0, &b.0));
                if out.is_empty() {
                    return Err(not_found("no release that recent".into()));
                }
                Ok(out.into_iter().map(|(_, v)| v).collect())
            }
        }
    }

    fn resolve_npm(&self, name: &str, which: &Releases) -> Result<Vec<Artifact>, RegistryError> {
        let doc = self.npm_packument(name)?;
        let versions = Registries::pick(
            &format!("npm:{name}"),
            doc.doc.versions.keys().cloned().collect(),
            doc.doc.dist_tags.get("latest").map(String::as_str),
            which,
        )?;
        versions.iter().map(|v| doc.artifact(v)).collect()
    }

    /// The abbreviated packument of npm package `name` (one request; [`NpmPackument::artifact`]
    /// then gives each release's tarball).
    pub fn npm_packument(&self, name: &str) -> Result<NpmPackument, RegistryError> {
        let url = format!("{}/{}", self.npm, name.replace('/', "%2f"));
        let body = self.get(&url, "application/vnd.npm.install-v1+json")?;
        let mut counted = Counted {
            inner: body.into_with_config().limit(MAX_METADATA_BYTES).reader(),
            n: 0,
        };
        let doc: Packument =
            serde_json::from_reader(&mut counted).map_err(|e| RegistryError::Metadata {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        Ok(NpmPackument {
            name: name.to_string(),
            url,
            doc,
            bytes: counted.n,
        })
    }

    fn resolve_pypi(&self, name: &str, which: &Releases) -> Result<Vec<Artifact>, RegistryError> {
        let url = format!("{}/pypi/{name}/json", self.pypi);
        let doc: PypiProject = self.get_json(&url, "application/json")?;
        let label = format!("pypi:{name}");
        // Yanked releases are left out of `latest` and `all-since:`, but can be named.
        let exact = matches!(which, Releases::Version(_));
        let listed: Vec<String> = doc
            .releases
            .iter()
            .filter(|(_, files)| files.iter().any(|f| exact || !f.yanked))
            .map(|(v, _)| v.clone())
            .collect();
        let versions = Registries::pick(&label, listed, Some(&doc.info.version), which)?;
        let mut out = Vec::new();
        for v in versions {
            for f in doc.releases.get(&v).into_iter().flatten() {
                if f.packagetype != "bdist_wheel" || (f.yanked && !exact) {
                    continue;
                }
                let digest =
                    decode_hex(&f.digests.sha256).ok_or_else(|| RegistryError::Metadata {
                        url: url.clone(),
                        reason: format!("{}: `{}` is not a SHA-256", f.filename, f.digests.sha256),
                    })?;
                out.push(Artifact {
                    label: format!("pypi:{name}@{v}:{}", f.filename),
                    version: v.clone(),
                    url: join_url(&url, &f.url),
                    integrity: Integrity::Sha256(digest),
                    packing: Packing::Zip,
                });
            }
        }
        if out.is_empty() {
            return Err(RegistryError::NotFound {
                spec: label,
                reason: "no wheel in the releases asked for".into(),
            });
        }
        Ok(out)
    }

    /// Download one artifact, verify it and hash every regular file inside (with `searcher`,
    /// also looking for its signatures in the same pass). The entries are returned only when the
    /// whole download matched the registry's integrity value.
    pub fn fetch(
        &self,
        a: &Artifact,
        searcher: Option<&ContentSearcher>,
    ) -> Result<Fetched, RegistryError> {
        let body = self.get(&a.url, "application/octet-stream")?;
        let reader = body.into_reader();
        // Whatever the archive's state, the whole download is hashed: a tampered download is
        // reported as such, not as the damaged archive it may also be.
        let (unpacked, bytes, actual) = match &a.integrity {
            Integrity::Sha512(_) => {
                let (u, n, d) = unpack_hashing(a, reader, sha2::Sha512::new(), searcher);
                (u, n, Integrity::Sha512(d))
            }
            Integrity::Sha256(_) => {
                let (u, n, d) = unpack_hashing(a, reader, sha2::Sha256::new(), searcher);
                (u, n, Integrity::Sha256(d))
            }
        };
        if actual != a.integrity {
            return Err(RegistryError::Integrity {
                url: a.url.clone(),
                expected: a.integrity.describe(),
                actual: actual.describe(),
            });
        }
        Ok(Fetched {
            bytes,
            entries: unpacked?,
        })
    }
}

/// What `interdict hashes fetch` does, besides the specs.
#[derive(Debug, Default)]
pub struct FetchOptions {
    /// Globs on the path inside the archive (`package/claude`, `**/_bundled/claude`); none
    /// means every file the archive marks executable.
    pub entries: Vec<String>,
    /// Globs on wheel file names (`*manylinux*x86_64*`); none means every wheel.
    pub wheels: Vec<String>,
    /// A policy whose family rules each printed file is checked against (the pack, to see that
    /// a new release is still identified by them).
    pub policy: Option<interdict_policy::Policy>,
}

/// How a run went.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FetchSummary {
    /// Artifacts downloaded and verified.
    pub artifacts: usize,
    /// Digest lines printed.
    pub lines: usize,
    /// Bytes downloaded.
    pub bytes: u64,
    /// Specs or artifacts that failed (nothing printed for them).
    pub failed: usize,
    /// Printed files that no family rule of the given policy identifies.
    pub unidentified: usize,
}

fn glob_set(globs: &[String]) -> Result<globset::GlobSet, RegistryError> {
    let mut b = globset::GlobSetBuilder::new();
    for g in globs {
        let glob = globset::GlobBuilder::new(g)
            .literal_separator(true)
            .build()
            .map_err(|e| RegistryError::BadSpec {
                spec: g.clone(),
                reason: e.kind().to_string(),
            })?;
        b.add(glob);
    }
    b.build().map_err(|e| RegistryError::BadSpec {
        spec: globs.join(" "),
        reason: e.to_string(),
    })
}

/// Resolve and fetch every spec, printing `sha256sum` lines (with a `#` comment naming the
/// release) to `out` for the chosen files of each verified artifact, and progress and problems
/// to `log`. A failing spec or artifact is reported and skipped; the others go on.
pub fn fetch_hashes(
    reg: &Registries,
    specs: &[Spec],
    opts: &FetchOptions,
    out: &mut impl io::Write,
    log: &mut impl io::Write,
) -> Result<FetchSummary, RegistryError> {
    let entries = glob_set(&opts.entries)?;
    let wheels = glob_set(&opts.wheels)?;
    let io_err = |e: io::Error| RegistryError::Http {
        url: "(output)".into(),
        reason: e.to_string(),
    };
    let mut sum = FetchSummary::default();
    for spec in specs {
        let artifacts = match reg.resolve(spec) {
            Ok(a) => a,
            Err(e) => {
                writeln!(log, "interdict: error: {e}").map_err(io_err)?;
                sum.failed += 1;
                continue;
            }
        };
        for a in artifacts {
            if a.packing == Packing::Zip && !opts.wheels.is_empty() {
                let file = a.url.rsplit('/').next().unwrap_or(&a.url);
                if !wheels.is_match(file) {
                    continue;
                }
            }
            let started = std::time::Instant::now();
            let searcher = opts
                .policy
                .as_ref()
                .and_then(|p| p.content_searcher())
                .map(|s| &**s);
            let fetched = match reg.fetch(&a, searcher) {
                Ok(f) => f,
                Err(e) => {
                    writeln!(log, "interdict: error: {e}").map_err(io_err)?;
                    sum.failed += 1;
                    continue;
                }
            };
            sum.artifacts += 1;
            sum.bytes += fetched.bytes;
            let secs = started.elapsed().as_secs_f64().max(1e-3);
            writeln!(
                log,
                "{}: {:.1} MiB in {secs:.1} s ({:.0} MiB/s), {}",
                a.label,
                fetched.bytes as f64 / 1048576.0,
                fetched.bytes as f64 / 1048576.0 / secs,
                a.integrity.kind()
            )
            .map_err(io_err)?;
            let chosen: Vec<&Entry> = fetched
                .entries
                .iter()
                .filter(|e| {
                    if opts.entries.is_empty() {
                        e.executable
                    } else {
                        entries.is_match(&e.path)
                    }
                })
                .collect();
            if chosen.is_empty() {
                writeln!(
                    log,
                    "{}: no file chosen (nothing executable, or no --entry matched)",
                    a.label
                )
                .map_err(io_err)?;
            }
            writeln!(out, "# {} ({})", a.label, a.integrity.kind()).map_err(io_err)?;
            for e in chosen {
                writeln!(out, "{}  {}:{}  size={}", e.sha256, a.label, e.path, e.size)
                    .map_err(io_err)?;
                sum.lines += 1;
                if let (Some(p), Some(s)) = (&opts.policy, searcher) {
                    let facts = crate::inventory::facts::FactsBuilder::default()
                        .exe_content(e.content.clone())
                        .script_content(e.content.clone())
                        .build();
                    let by_family = p
                        .evaluate(&facts)
                        .filter(|d| d.selector == interdict_policy::SelectorKind::Contains);
                    match by_family {
                        Some(d) => writeln!(
                            log,
                            "{}:{}: identified by family rule `{}`",
                            a.label,
                            e.path,
                            p.rule(&d).id
                        )
                        .map_err(io_err)?,
                        None => {
                            sum.unidentified += 1;
                            let c = e.content.as_ref();
                            writeln!(
                                log,
                                "interdict: warning: {}:{} is identified by no family rule ({} of {} signatures, format {}): check the signatures",
                                a.label,
                                e.path,
                                c.map_or(0, |c| s.found_signatures(c).len()),
                                s.len(),
                                c.and_then(|c| c.format()).map_or("unknown", |f| f.as_str())
                            )
                            .map_err(io_err)?;
                        }
                    }
                }
            }
        }
    }
    Ok(sum)
}

impl Integrity {
    fn kind(&self) -> &'static str {
        match self {
            Integrity::Sha512(_) => "sha512 integrity verified",
            Integrity::Sha256(_) => "sha256 verified",
        }
    }
}

/// `interdict hashes fetch` arguments.
#[derive(Debug, clap::Args)]
pub struct FetchArgs {
    /// `npm:NAME@VERSION|latest|all-since:VERSION` or `pypi:NAME@...` (repeatable).
    #[arg(required = true, value_name = "SPEC")]
    pub specs: Vec<String>,
    /// Only files whose path in the archive matches this glob (repeatable), e.g.
    /// `package/claude`; default: every file the archive marks executable.
    #[arg(long = "entry", value_name = "GLOB")]
    pub entries: Vec<String>,
    /// Only wheels whose file name matches this glob (repeatable), e.g. `*manylinux*x86_64*`.
    #[arg(long = "wheel", value_name = "GLOB")]
    pub wheels: Vec<String>,
    /// Check every printed file against this policy's family rules (`contains_all`).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<std::path::PathBuf>,
    /// The npm registry.
    #[arg(long, value_name = "URL", default_value = NPM_REGISTRY)]
    pub npm_registry: String,
    /// PyPI.
    #[arg(long, value_name = "URL", default_value = PYPI)]
    pub pypi: String,
    /// Trust the CAs in this PEM file (default: `$SSL_CERT_FILE`, else the system's bundle).
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<std::path::PathBuf>,
}

/// Run `interdict hashes fetch`: the exit code (see [`FetchArgs`]).
pub fn fetch_command(args: &FetchArgs) -> anyhow::Result<u8> {
    let specs = args
        .specs
        .iter()
        .map(|s| s.parse::<Spec>())
        .collect::<Result<Vec<_>, _>>()?;
    let policy = match &args.policy {
        Some(p) => match crate::policy::load_or_print(p) {
            Some(l) => Some(l.policy),
            None => return Ok(crate::cli::exit::ERROR),
        },
        None => None,
    };
    let opts = FetchOptions {
        entries: args.entries.clone(),
        wheels: args.wheels.clone(),
        policy,
    };
    let reg = Registries::new(&args.npm_registry, &args.pypi, args.ca_file.as_deref())?;
    let stdout = io::stdout();
    let stderr = io::stderr();
    let sum = fetch_hashes(&reg, &specs, &opts, &mut stdout.lock(), &mut stderr.lock())?;
    eprintln!(
        "{} artifact(s), {:.1} MiB verified, {} digest(s) printed, {} failed",
        sum.artifacts,
        sum.bytes as f64 / 1048576.0,
        sum.lines,
        sum.failed
    );
    Ok(if sum.failed > 0 {
        crate::cli::exit::ERROR
    } else if sum.unidentified > 0 {
        crate::cli::exit::VIOLATIONS
    } else {
        crate::cli::exit::OK
    })
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    Sha256::from_hex(s).map(|d| d.0.to_vec())
}

/// Read the whole archive from `r`, hashing each regular file, then drain what follows it so that
/// the caller's integrity hash covers every byte.
fn unpack(
    url: &str,
    packing: Packing,
    r: &mut impl Read,
    searcher: Option<&ContentSearcher>,
) -> Result<Vec<Entry>, RegistryError> {
    let bad = |reason: String| RegistryError::Archive {
        url: url.to_string(),
        reason,
    };
    let mut entries = Vec::new();
    match packing {
        Packing::TarGz => {
            let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&mut *r));
            for e in archive.entries().map_err(|e| bad(e.to_string()))? {
                let e = e.map_err(|e| bad(e.to_string()))?;
                if entries.len() >= MAX_ENTRIES {
                    return Err(bad(format!("more than {MAX_ENTRIES} entries")));
                }
                if e.header().entry_type() != tar::EntryType::Regular {
                    continue;
                }
                let path = String::from_utf8_lossy(&e.path_bytes()).into_owned();
                let mode = e.header().mode().unwrap_or(0);
                let (d, size) = crate::inventory::hash::digest_reader(e, searcher)
                    .map_err(|e| bad(format!("{path}: {e}")))?;
                entries.push(Entry {
                    path,
                    sha256: d.sha256,
                    size,
                    executable: mode & 0o111 != 0,
                    content: d.content,
                });
            }
            let mut gz = archive.into_inner();
            io::copy(&mut gz, &mut io::sink()).map_err(|e| bad(e.to_string()))?;
        }
        Packing::Zip => {
            // Local headers first (one per file, with its data), then the central directory,
            // which alone holds the Unix modes.
            loop {
                if entries.len() >= MAX_ENTRIES {
                    return Err(bad(format!("more than {MAX_ENTRIES} entries")));
                }
                let Some(mut file) =
                    zip::read::read_zipfile_from_stream(&mut *r).map_err(|e| bad(e.to_string()))?
                else {
                    break;
                };
                if !file.is_file() {
                    continue;
                }
                let path = String::from_utf8_lossy(file.name_raw()).into_owned();
                let (d, size) = crate::inventory::hash::digest_reader(&mut file, searcher)
                    .map_err(|e| bad(format!("{path}: {e}")))?;
                entries.push(Entry {
                    path,
                    sha256: d.sha256,
                    size,
                    executable: false,
                    content: d.content,
                });
            }
            // The central directory's first signature was read by the loop above.
            let modes = central_directory_modes(&mut *r, true).map_err(|e| bad(e.to_string()))?;
            for e in &mut entries {
                e.executable = modes.get(e.path.as_bytes()).is_some_and(|m| m & 0o111 != 0);
            }
        }
    }
    Ok(entries)
}

/// The Unix mode of each name in a zip's central directory (the high 16 bits of the external
/// attributes of entries made on Unix), read up to the end-of-directory record.
fn central_directory_modes(
    r: &mut impl Read,
    first_signature_read: bool,
) -> io::Result<std::collections::HashMap<Vec<u8>, u32>> {
    const CENTRAL: u32 = 0x0201_4b50;
    let mut modes = std::collections::HashMap::new();
    let mut skip_sig = first_signature_read;
    loop {
        if !skip_sig {
            let mut sig = [0u8; 4];
            r.read_exact(&mut sig)?;
            if u32::from_le_bytes(sig) != CENTRAL {
                // The end of the central directory (or zip64 records): modes are complete.
                return Ok(modes);
            }
        }
        skip_sig = false;
        if modes.len() >= MAX_ENTRIES {
            return Err(io::Error::other(format!("more than {MAX_ENTRIES} entries")));
        }
        let mut h = [0u8; 42];
        r.read_exact(&mut h)?;
        let u16_at = |i: usize| u16::from_le_bytes([h[i], h[i + 1]]) as usize;
        let made_by_unix = h[1] == 3;
        let (name_len, extra_len, comment_len) = (u16_at(24), u16_at(26), u16_at(28));
        let external = u32::from_le_bytes([h[34], h[35], h[36], h[37]]);
        let mut name = vec![0u8; name_len];
        r.read_exact(&mut name)?;
        io::copy(
            &mut r.by_ref().take((extra_len + comment_len) as u64),
            &mut io::sink(),
        )?;
        if made_by_unix {
            modes.insert(name, external >> 16);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        let s: Spec = "npm:@anthropic-ai/claude-code-linux-x64@2.1.332"
            .parse()
            .unwrap();
        assert_eq!(
            s,
            Spec {
                package: Package::Npm("@anthropic-ai/claude-code-linux-x64".into()),
                releases: Releases::Version("2.1.332".into())
            }
        );
        let s: Spec = "pypi:claude-agent-sdk@all-since:0.2.100".parse().unwrap();
        assert_eq!(s.releases, Releases::AllSince("0.2.100".into()));
        let s: Spec = "npm:left-pad@latest".parse().unwrap();
        assert_eq!(s.package, Package::Npm("left-pad".into()));
        for bad in [
            "@anthropic-ai/claude-code@1.0",
            "npm:@anthropic-ai/claude-code",
            "cargo:x@1",
            "npm:x@all-since:beta",
            "npm:@1.0",
        ] {
            assert!(bad.parse::<Spec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn urls() {
        let base = "https://pypi.org/pypi/claude-agent-sdk/json";
        assert_eq!(
            join_url(base, "../../packages/packages/07/f1/x.whl"),
            "https://pypi.org/packages/packages/07/f1/x.whl"
        );
        assert_eq!(
            join_url(base, "https://files.pythonhosted.org/a.whl"),
            "https://files.pythonhosted.org/a.whl"
        );
        assert_eq!(join_url(base, "/a/b.whl"), "https://pypi.org/a/b.whl");
        assert_eq!(
            join_url(base, "//files.example/a.whl"),
            "https://files.example/a.whl"
        );
        assert_eq!(
            join_url(base, "x.whl#sha=1"),
            "https://pypi.org/pypi/claude-agent-sdk/x.whl#sha=1"
        );
    }

    #[test]
    fn release_order() {
        let mut v = vec!["2.1.10", "2.1.9", "2.1.100", "2.0.0", "2.1.9-beta"];
        v.retain(|x| release_key(x).is_some());
        v.sort_by(|a, b| cmp_release(&release_key(a).unwrap(), &release_key(b).unwrap()));
        assert_eq!(v, ["2.0.0", "2.1.9", "2.1.10", "2.1.100"]);
    }
}
