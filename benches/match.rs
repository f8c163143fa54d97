//! Decision cost of the compiled policy: a policy of 10,000 rules with mixed selectors, the
//! facts of one exec, nanoseconds per decision (no hashing: digests are given as facts).
//!
//! Run: `cargo bench --bench match`

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion};
use interdict_policy::{Facts, NoIncludes, Policy, Sha256};

const RULES: usize = 10_000;

fn digest(i: usize) -> String {
    format!(
        "{:064x}",
        (i as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
    )
}

fn policy_text() -> String {
    let mut s = String::from("[policy]\nname = \"bench\"\nversion = \"1\"\nmode = \"enforce\"\n");
    for i in 0..RULES {
        let sel = match i % 5 {
            0 => format!("names = [\"tool-{i}\"]\nsha256 = [\"{}\"]", digest(i)),
            1 => format!("paths = [\"**/.local/share/tool-{i}/versions/*\"]"),
            2 => format!("scripts = [\"**/node_modules/@vendor-{i}/cli/cli.js\"]"),
            3 => format!("packages = [\"npm:@vendor-{i}/cli\"]"),
            _ => format!(
                "paths = [\"/opt/vendor-{i}/bin/tool\"]\nsha256 = [\"{}\"]",
                digest(i)
            ),
        };
        s.push_str(&format!(
            "\n[[rule]]\nid = \"rule-{i}\"\nname = \"Tool {i}\"\nrisk = \"high\"\nreason = \"bench\"\naction = \"report\"\n[rule.match]\n{sel}\n"
        ));
    }
    s
}

fn exec_facts(exe: &str, script: Option<&str>, sha: Option<String>) -> Facts {
    Facts {
        names: vec![exe.rsplit('/').next().unwrap().to_string(), "comm".into()],
        exe_path: Some(PathBuf::from(exe)),
        script_path: script.map(PathBuf::from),
        exe_sha256: sha.and_then(|s| Sha256::from_hex(&s)),
        user: Some("ann".into()),
        groups: vec!["staff".into()],
        host: Some("laptop-1".into()),
        ..Facts::default()
    }
}

fn bench(c: &mut Criterion) {
    let text = policy_text();
    let (policy, _) = Policy::load("bench.toml", &text, &NoIncludes).expect("valid bench policy");
    let cases = [
        ("miss", exec_facts("/usr/bin/git", None, None)),
        (
            "miss-with-digest",
            exec_facts("/usr/bin/git", None, Some(digest(123_456))),
        ),
        (
            "hit-path-glob",
            exec_facts(
                "/home/ann/.local/share/tool-5001/versions/2.1.0",
                None,
                None,
            ),
        ),
        (
            "hit-literal-path",
            exec_facts("/opt/vendor-9999/bin/tool", None, None),
        ),
        (
            "hit-script",
            exec_facts(
                "/usr/bin/node",
                Some("/usr/lib/node_modules/@vendor-7002/cli/cli.js"),
                None,
            ),
        ),
        (
            "hit-sha256",
            exec_facts("/tmp/renamed", None, Some(digest(9_995))),
        ),
        ("hit-name", exec_facts("/usr/local/bin/tool-5", None, None)),
    ];
    let mut g = c.benchmark_group("decision-10k-rules");
    for (name, facts) in &cases {
        let expect_hit = name.starts_with("hit");
        assert_eq!(policy.evaluate(facts).is_some(), expect_hit, "{name}");
        g.bench_function(*name, |b| b.iter(|| policy.evaluate(black_box(facts))));
    }
    g.finish();

    // The same decision without compilation, as a side-by-side baseline: every rule's globs
    // tried one by one (what a first-match rule list like fapolicyd's does per event).
    let naive: Vec<Vec<globset::GlobMatcher>> = policy
        .rules()
        .iter()
        .map(|r| {
            r.selectors
                .paths
                .iter()
                .map(|g| {
                    globset::GlobBuilder::new(g)
                        .literal_separator(true)
                        .build()
                        .unwrap()
                        .compile_matcher()
                })
                .collect()
        })
        .collect();
    let mut g = c.benchmark_group("decision-10k-rules-uncompiled-baseline");
    g.sample_size(20);
    for (name, facts) in cases
        .iter()
        .filter(|(n, _)| *n == "miss" || *n == "hit-path-glob")
    {
        let exe = facts.exe_path.clone().unwrap();
        g.bench_function(*name, |b| {
            b.iter(|| {
                naive
                    .iter()
                    .position(|globs| globs.iter().any(|m| m.is_match(black_box(&exe))))
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("load-10k-rules");
    g.sample_size(10);
    g.bench_function("parse-validate-compile", |b| {
        b.iter(|| Policy::load("bench.toml", black_box(&text), &NoIncludes).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
