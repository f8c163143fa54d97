//! Run the third-party validators (see `install.sh` beside this file) on records: the OCSF
//! schema through PyPI `ocsf-json-schema` + `jsonschema`, ECS through Elastic's field reference
//! (npm `@elastic/ecs`). Shared by the event crate's tests and the agent's live SIEM test.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// This folder. `file!()` is relative to the workspace root, which is the manifest folder or
/// one of its parents.
fn here() -> PathBuf {
    let rel = Path::new(file!()).parent().expect("a folder");
    let mut dir = Some(Path::new(env!("CARGO_MANIFEST_DIR")));
    while let Some(d) = dir {
        if d.join(rel).join("install.sh").is_file() {
            return d.join(rel);
        }
        dir = d.parent();
    }
    panic!(
        "cannot find {} above {}",
        rel.display(),
        env!("CARGO_MANIFEST_DIR")
    );
}

/// Where the validators are installed: `$INTERDICT_SIEM_VALIDATORS`, else
/// `~/.cache/interdict/siem-validators`; installed there first when missing.
pub fn tools() -> PathBuf {
    let dir = std::env::var_os("INTERDICT_SIEM_VALIDATORS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME"))
                .join(".cache/interdict/siem-validators")
        });
    let out = Command::new("bash")
        .arg(here().join("install.sh"))
        .arg(&dir)
        .output()
        .expect("run install.sh");
    assert!(
        out.status.success(),
        "installing the SIEM validators into {} failed (needs python3 with venv, and npm; \
         .ci/run installs them):\n{}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

fn run(mut cmd: Command, records: &[serde_json::Value]) -> Result<String, String> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the validator");
    let mut input = String::new();
    for r in records {
        input.push_str(&r.to_string());
        input.push('\n');
    }
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// Validate OCSF records against the OCSF schema of their version, class and declared
/// profiles. `Err` holds every problem.
pub fn ocsf(records: &[serde_json::Value]) -> Result<String, String> {
    let mut cmd = Command::new(tools().join("venv/bin/python"));
    cmd.arg(here().join("ocsf_validate.py"));
    run(cmd, records)
}

/// Validate ECS documents against Elastic's field reference. `Err` holds every problem.
pub fn ecs(records: &[serde_json::Value]) -> Result<String, String> {
    let mut cmd = Command::new("node");
    cmd.arg(here().join("ecs_validate.js"))
        .env("NODE_PATH", tools().join("node_modules"));
    run(cmd, records)
}
