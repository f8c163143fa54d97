//! Cost of the family rules: reading and hashing files as the scan does (256 KiB reads,
//! SHA-256), with and without looking for the shipped pack's family signatures in the same
//! pass. Files come from the page cache (each is read once before measuring).
//!
//! Run: `cargo bench --bench family`
//!
//! Sets: the ELF files under /usr/bin and /usr/lib (up to 768 MiB: executables and libraries,
//! none of them Claude Code, so every byte is searched), and, when `INTERDICT_BENCH_CLAUDE`
//! names a Claude Code binary, that binary (all signatures found early: the rest is only hashed).

use std::hint::black_box;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use interdict::hash::digest_reader;
use interdict_policy::ContentSearcher;

const MAX_SET_BYTES: u64 = 768 << 20;

fn elf_files() -> (Vec<PathBuf>, u64) {
    let mut out = Vec::new();
    let mut total = 0;
    let mut stack = vec![PathBuf::from("/usr/bin"), PathBuf::from("/usr/lib")];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        let mut entries: Vec<_> = rd.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                let Ok(mut f) = std::fs::File::open(e.path()) else {
                    continue;
                };
                let mut magic = [0u8; 4];
                if f.read_exact(&mut magic).is_ok() && &magic == b"\x7fELF" {
                    let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                    if total + len > MAX_SET_BYTES {
                        continue;
                    }
                    total += len;
                    out.push(e.path());
                }
            }
        }
    }
    (out, total)
}

fn searcher() -> std::sync::Arc<ContentSearcher> {
    let pack = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/ai-coding-agents.toml");
    let loaded = interdict::policy_file::load(&pack).expect("the shipped pack loads");
    loaded
        .policy
        .content_searcher()
        .expect("the shipped pack has a family rule")
        .clone()
}

fn read_all(files: &[PathBuf], s: Option<&ContentSearcher>) -> u64 {
    let mut n = 0;
    for f in files {
        let file = std::fs::File::open(f).unwrap();
        let (d, len) = digest_reader(file, s).unwrap();
        black_box(d);
        n += len;
    }
    n
}

fn bench(c: &mut Criterion) {
    let s = searcher();
    let mut sets = vec![("usr-elf", elf_files())];
    if let Some(p) = std::env::var_os("INTERDICT_BENCH_CLAUDE") {
        let p = PathBuf::from(p);
        let len = std::fs::metadata(&p).unwrap().len();
        sets.push(("claude-code", (vec![p], len)));
    }
    for (name, (files, bytes)) in &sets {
        // Warm the page cache.
        read_all(files, None);
        let mut g = c.benchmark_group(format!("family/{name}"));
        g.throughput(Throughput::Bytes(*bytes))
            .sample_size(10)
            .measurement_time(Duration::from_secs(20))
            .warm_up_time(Duration::from_secs(3));
        eprintln!("{name}: {} files, {} MiB", files.len(), bytes >> 20);
        g.bench_function("sha256", |b| b.iter(|| read_all(files, None)));
        g.bench_function("sha256+family", |b| b.iter(|| read_all(files, Some(&s))));
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
