//! Golden files pin every rendered document. Regenerate with `WEBAKE_BLESS=1 cargo test -p
//! webake-pipeline --test golden` and review the diff.

mod common;

use std::collections::BTreeSet;
use std::fmt::Write as _;

use common::{CASES, golden_dir, rendered};

const BLESS_VAR: &str = "WEBAKE_BLESS";

fn blessing() -> bool {
    std::env::var_os(BLESS_VAR).is_some_and(|v| v != "0" && !v.is_empty())
}

#[test]
fn rendered_documents_match_golden_files() {
    let dir = golden_dir();
    let bless = blessing();
    let mut failures = String::new();
    let mut expected_files = BTreeSet::new();
    for case in CASES {
        let out = rendered(case);
        for doc in &out.documents {
            let file = format!("{case}-{}", doc.file_name);
            expected_files.insert(file.clone());
            let path = dir.join(&file);
            let actual = format!("{}---\n{}", out.header, doc.yaml);
            if bless {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &actual).unwrap();
                continue;
            }
            let golden = std::fs::read_to_string(&path).unwrap_or_default();
            if golden != actual {
                let diff = similar::TextDiff::from_lines(&golden, &actual);
                writeln!(
                    failures,
                    "--- {} (golden)\n+++ rendered\n{}",
                    path.display(),
                    diff.unified_diff().context_radius(3)
                )
                .unwrap();
            }
        }
    }
    // A golden file nothing renders any more is stale.
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".yaml") && !expected_files.contains(&name) {
            if bless {
                std::fs::remove_file(dir.join(&name)).unwrap();
            } else {
                writeln!(failures, "stale golden file {name}: nothing renders it").unwrap();
            }
        }
    }
    assert!(
        failures.is_empty(),
        "rendered output differs from the golden files; if the change is intended, run\n  \
         {BLESS_VAR}=1 cargo test -p webake-pipeline --test golden\nand review the diff.\n\n{failures}"
    );
}

#[test]
fn rendering_is_deterministic() {
    for case in CASES {
        assert_eq!(rendered(case), rendered(case), "{case}");
    }
}

#[test]
fn multi_document_stream_holds_header_and_every_document() {
    let out = rendered("ami");
    let text = out.to_multi_document();
    assert!(text.starts_with("# Rendered by `webake pipeline render`"));
    assert!(
        text.contains(
            "# recipe: tests/fixtures/recipe.yaml (name debian-12-base, family debian-12"
        )
    );
    assert!(text.contains("# config: tests/fixtures/config.yaml"));
    assert!(text.contains("# service: tests/fixtures/service-ami.yaml (kind ami, name webake)"));
    assert_eq!(
        text.matches("\n---\n").count() + usize::from(text.starts_with("---\n")),
        out.documents.len()
    );
    let kinds: Vec<_> = out.documents.iter().map(|d| d.kind).collect();
    assert_eq!(
        kinds,
        [
            "Job",
            "CronJob",
            "CronJob",
            "Task",
            "Task",
            "Task",
            "Task",
            "Pipeline",
            "PipelineRun",
            "TriggerTemplate",
            "TriggerBinding"
        ]
    );
}

#[test]
fn write_to_dir_writes_one_file_per_document() {
    let out = rendered("docker");
    let dir = tempfile::tempdir().unwrap();
    let written = out.write_to_dir(dir.path()).unwrap();
    assert_eq!(written.len(), out.documents.len());
    for (path, doc) in written.iter().zip(&out.documents) {
        let text = std::fs::read_to_string(path).unwrap();
        assert_eq!(text, format!("{}---\n{}", out.header, doc.yaml));
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
