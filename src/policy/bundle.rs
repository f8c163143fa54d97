//! Policy bundles on disk: a policy file and the `sha256_files` it names, made into one
//! [`BundleBody`] for IT to sign (`interdict policy sign`), and a bundle's policy read back
//! without touching the filesystem (the agent, `interdict policy verify`).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;

use interdict_fleet::BundleBody;
use interdict_policy::{Diagnostics, IncludedFile, Includes, Policy};

use super::{DirIncludes, LoadError, LoadedPolicy};

/// Reads `sha256_files` from the policy's folder and remembers each one read.
pub(crate) struct Recording {
    pub(crate) dir: DirIncludes,
    pub(crate) read: RefCell<BTreeMap<String, String>>,
}

impl Includes for Recording {
    fn read(&self, relative: &str) -> Result<IncludedFile, String> {
        let f = self.dir.read(relative)?;
        self.read
            .borrow_mut()
            .insert(relative.to_string(), f.text.clone());
        Ok(f)
    }
}

/// The bundle of the policy at `path` (validated: a policy with any error is not bundled),
/// with `version` and `created`.
pub fn body_of(
    path: &Path,
    version: u64,
    created: String,
) -> Result<(BundleBody, LoadedPolicy), LoadError> {
    let text = super::read_limited(path).map_err(|source| LoadError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let rec = Recording {
        dir: DirIncludes::for_policy(path),
        read: RefCell::new(BTreeMap::new()),
    };
    let (policy, warnings) =
        Policy::load(&path.display().to_string(), &text, &rec).map_err(LoadError::Invalid)?;
    let sha256 = interdict_fleet::sha256_hex(text.as_bytes());
    let content_sha256 = super::content_sha256(&text, &rec.read.borrow());
    let body = BundleBody {
        version,
        created,
        policy_sha256: sha256.clone(),
        policy: text,
        files: rec.read.into_inner(),
    };
    Ok((
        body,
        LoadedPolicy {
            policy,
            warnings,
            path: path.to_path_buf(),
            sha256,
            content_sha256,
        },
    ))
}

/// The `sha256_files` of a bundle, read from the bundle itself.
struct Files<'a>(&'a BTreeMap<String, String>, u64);

impl Includes for Files<'_> {
    fn read(&self, relative: &str) -> Result<IncludedFile, String> {
        self.0
            .get(relative)
            .map(|t| IncludedFile {
                display_name: format!("bundle {}: {relative}", self.1),
                text: t.clone(),
            })
            .ok_or_else(|| "not in the bundle".to_string())
    }
}

/// A bundle's policy, validated and compiled (its files come from the bundle only); every
/// diagnostic when it is invalid.
pub fn to_loaded(body: &BundleBody) -> Result<LoadedPolicy, Diagnostics> {
    let name = format!("bundle {}: policy.toml", body.version);
    let (policy, warnings) = Policy::load(&name, &body.policy, &Files(&body.files, body.version))?;
    Ok(LoadedPolicy {
        policy,
        warnings,
        path: format!("bundle:{}", body.version).into(),
        sha256: body.policy_sha256.clone(),
        content_sha256: super::content_sha256(&body.policy, &body.files),
    })
}
