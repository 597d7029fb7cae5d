//! The engine's stages without the binary: plan, bake (into a catalog of its own), the boot
//! test of the baked image under qemu, and the up-to-date rule of a second bake.
//!
//! `harness = false`: this test binary is also the sandbox helper and the boot test's
//! metadata relay (the engine re-executes `Settings::helper_exe`, here the test binary), so
//! `main` dispatches those first. Needs root, the bake tools and qemu; fails naming what is
//! missing. The bootstrap and layer caches are shared with the CLI tests
//! (`$CARGO_TARGET_TMPDIR/webake-cache`): the base is bootstrapped once per machine.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;

use webake_catalog::{ArtifactFormat, TestResult};
use webake_engine::bake::BakeOptions;
use webake_engine::boottest::{Subject, TestOptions};
use webake_engine::{Context, Event, Reporter, Settings};

const RECIPE: &str = "version: 1
image:
  name: engine-test
  family: engine-test
base:
  mmdebstrap:
    suite: bookworm
    variant: apt
    include:
      - linux-image-cloud-amd64
      - systemd-sysv
      - udev
      - openssh-server
      - ifupdown
      - isc-dhcp-client
provisioners:
  - shell:
      name: mark
      inline:
        - echo baked-by-the-engine > /etc/engine-test
outputs: [raw]
test:
  timeout_secs: 120
  checks:
    - name: the step's file is in the image
      run: cat /etc/engine-test
      expect_stdout: baked-by-the-engine
";

/// Every event, as the text the CLI would print.
#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl Reporter for Recorder {
    fn event(&self, e: &Event<'_>) {
        let line = match e {
            Event::StepStarted { step, detail } => format!("start {step}: {detail}"),
            Event::StepFinished { step, cache, .. } => format!("done {step} {cache:?}"),
            Event::Output { step, line } => format!("out {step}: {line}"),
            Event::Note(m) => format!("note {m}"),
            Event::Warning(m) => format!("warning {m}"),
            other => format!("{other:?}"),
        };
        self.0.lock().unwrap().push(line);
    }
}

impl Recorder {
    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

fn which(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

fn require_capabilities() {
    assert!(
        nix_uid_is_root(),
        "this test bakes images (namespaces, mounts): run it as root (CI runs as root)"
    );
    for (tool, pkg) in [
        ("mmdebstrap", "mmdebstrap"),
        ("mkfs.ext4", "e2fsprogs"),
        ("sfdisk", "fdisk"),
        ("mkfs.vfat", "dosfstools"),
        ("mcopy", "mtools"),
        ("grub-mkimage", "grub-efi-amd64-bin"),
        ("qemu-img", "qemu-utils"),
        ("debugfs", "e2fsprogs"),
        ("qemu-system-x86_64", "qemu-system-x86"),
    ] {
        assert!(
            which(tool),
            "missing host tool `{tool}`: apt-get install {pkg} (or run scripts/setup.sh --test)"
        );
    }
}

fn nix_uid_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// A data dir and catalog of its own; the caches shared with the other bake tests.
fn settings(dir: &Path) -> Settings {
    let shared = Path::new(env!("CARGO_TARGET_TMPDIR")).join("webake-cache");
    let cache = dir.join("cache");
    for d in ["bootstrap", "layers", "locks"] {
        std::fs::create_dir_all(shared.join(d)).unwrap();
        std::fs::create_dir_all(&cache).unwrap();
        std::os::unix::fs::symlink(shared.join(d), cache.join(d)).unwrap();
    }
    let data = dir.join("data");
    Settings::new(&data, &cache, &data.join("catalog.db")).unwrap()
}

fn bake_and_boot_test() {
    let dir = tempfile::Builder::new()
        .prefix("webake-engine-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let recipe_path: PathBuf = dir.path().join("engine-test.yaml");
    std::fs::write(&recipe_path, RECIPE).unwrap();
    let recorder = Recorder::default();
    let ctx = Context::new(
        settings(dir.path()),
        &recorder,
        webake_sys::CancelToken::new(),
    );
    let recipe = webake_spec::load(&recipe_path).expect("the recipe loads");
    let plan = webake_engine::plan::plan(Some(&ctx), &recipe).expect("plan");
    assert_eq!(plan.steps.len(), 1, "one step planned");

    // Bake: the typed outcome, the catalog record, the artifacts on disk.
    let outcome = webake_engine::bake::bake(&ctx, &recipe, &plan, &BakeOptions::default())
        .unwrap_or_else(|e| panic!("bake: {}", webake_engine::error::chain(&e)));
    assert!(!outcome.up_to_date);
    let img = &outcome.image;
    let recorded = ctx.catalog().unwrap().find_image(img.id.as_str()).unwrap();
    assert_eq!(recorded.inputs_digest, plan.inputs_digest);
    assert_eq!(recorded.bake_id, outcome.bake_id);
    let raw = recorded
        .artifact(ArtifactFormat::Raw)
        .expect("a raw artifact");
    assert_eq!(std::fs::metadata(&raw.path).unwrap().len(), raw.size);
    let inv = recorded.inventory.as_ref().expect("an inventory");
    assert!(
        inv.packages.iter().any(|p| p.name == "systemd-sysv"),
        "the inventory lists the image's packages"
    );
    assert_eq!(
        recorded.provenance.recipe,
        recipe_path.display().to_string()
    );
    let lines = recorder.lines();
    for step in ["start 1. mark", "start inspect", "start assemble"] {
        assert!(
            lines.iter().any(|l| l.starts_with(step)),
            "no {step:?} event in:\n{}",
            lines.join("\n")
        );
    }

    // Boot test of the recorded image: the check passes, the result is recorded.
    let subject = Subject::Image(Box::new(recorded));
    let spec = recipe.recipe.test.clone().expect("a test section");
    let report =
        webake_engine::boottest::test_subject(&ctx, &subject, &spec, &TestOptions::default())
            .unwrap_or_else(|e| panic!("boot test: {}", webake_engine::error::chain(&e)));
    assert_eq!(report.checks_passed, 1);
    let after = ctx.catalog().unwrap().find_image(img.id.as_str()).unwrap();
    assert_eq!(after.test_result, Some(TestResult::Passed));
    let lines = recorder.lines();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("out boot test: check the step's file")),
        "each check is reported:\n{}",
        lines.join("\n")
    );

    // The same inputs again: nothing is baked.
    let again = webake_engine::bake::bake(&ctx, &recipe, &plan, &BakeOptions::default()).unwrap();
    assert!(again.up_to_date, "unchanged inputs bake nothing");
    assert_eq!(again.image.id, img.id);
}

fn main() -> ExitCode {
    if let Some(code) = webake_sys::sandbox::helper_main_if_requested() {
        return ExitCode::from(code);
    }
    if let Some(code) = webake_engine::boottest::imds::tcp_pipe_main_if_requested() {
        return ExitCode::from(code);
    }
    // `cargo test -- --list` and filters: one test here.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        println!("bake_and_boot_test: test");
        return ExitCode::SUCCESS;
    }
    if let Some(filter) = args.iter().find(|a| !a.starts_with('-'))
        && !"bake_and_boot_test".contains(filter.as_str())
    {
        return ExitCode::SUCCESS;
    }
    require_capabilities();
    println!("test bake_and_boot_test ...");
    bake_and_boot_test();
    println!("test bake_and_boot_test ... ok");
    ExitCode::SUCCESS
}
