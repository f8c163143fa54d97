//! Cost of the family rules: reading and hashing files as the scan does (256 KiB reads,
//! SHA-256), with and without looking for the shipped pack's family signatures in the same
//! pass. Files come from the page cache (each is read once before measuring).
//!
//! Run: `cargo bench --bench family`
//!
//! Measured in CPU time of the benchmark thread (user + system, `CLOCK_THREAD_CPUTIME_ID`), not
//! wall time: the cost per GB, and far less disturbed by other work on a shared machine.
//!
//! `INTERDICT_BENCH_SIGNATURES="sig one|sig two|..."` measures other signatures instead of the
//! pack's (more than 12 switches to the automaton).
//!
//! Sets: the ELF files under /usr/bin and /usr/lib (up to 768 MiB: executables and libraries,
//! none of them Claude Code, so every byte is searched), and, when `INTERDICT_BENCH_CLAUDE`
//! names a Claude Code binary, that binary (all signatures found early: the rest is only hashed).

use std::hint::black_box;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use interdict::inventory::hash::digest_reader;
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

/// The shipped pack's signatures, or those of `INTERDICT_BENCH_SIGNATURES` (`|`-separated).
fn searcher() -> std::sync::Arc<ContentSearcher> {
    if let Ok(list) = std::env::var("INTERDICT_BENCH_SIGNATURES") {
        let sigs: Vec<String> = list.split('|').map(|s| format!("{s:?}")).collect();
        let text = format!(
            "[policy]\nname = \"b\"\nversion = \"1\"\nmode = \"enforce\"\n[[rule]]\nid = \"f\"\nname = \"f\"\nrisk = \"low\"\nreason = \"r\"\naction = \"report\"\n[rule.match]\ncontains_all = [{}]\n",
            sigs.join(", ")
        );
        let (p, _) =
            interdict_policy::Policy::load("bench.toml", &text, &interdict_policy::NoIncludes)
                .unwrap_or_else(|d| panic!("{d}"));
        eprintln!("signatures: {list}");
        return p.content_searcher().unwrap().clone();
    }
    let pack = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/ai-coding-agents.toml");
    let loaded = interdict::policy::load(&pack).expect("the shipped pack loads");
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

/// CPU time of the calling thread, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec that outlives the call; the clock id is a
    // constant the kernel knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Criterion measurement: CPU time of the benchmark thread.
struct ThreadCpu;

struct CpuFormatter;

impl ValueFormatter for CpuFormatter {
    fn scale_values(&self, typical: f64, values: &mut [f64]) -> &'static str {
        let (div, unit) = if typical >= 1e9 {
            (1e9, "s (cpu)")
        } else if typical >= 1e6 {
            (1e6, "ms (cpu)")
        } else {
            (1e3, "µs (cpu)")
        };
        for v in values {
            *v /= div;
        }
        unit
    }

    fn scale_throughputs(
        &self,
        _typical: f64,
        throughput: &Throughput,
        values: &mut [f64],
    ) -> &'static str {
        let bytes = match throughput {
            Throughput::Bytes(b) | Throughput::BytesDecimal(b) => *b as f64,
            _ => 1.0,
        };
        // ns per iteration -> CPU seconds per GiB
        for v in values {
            *v = *v / 1e9 / (bytes / (1u64 << 30) as f64);
        }
        "cpu-s/GiB"
    }

    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

impl Measurement for ThreadCpu {
    type Intermediate = u64;
    type Value = u64;

    fn start(&self) -> u64 {
        thread_cpu_ns()
    }
    fn end(&self, i: u64) -> u64 {
        thread_cpu_ns() - i
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &CpuFormatter
    }
}

fn bench(c: &mut Criterion<ThreadCpu>) {
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

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(ThreadCpu);
    targets = bench
}
criterion_main!(benches);
