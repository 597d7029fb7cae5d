use super::*;

const GOOD: &str = r#"version: 1
image:
  name: debian-minimal
  version: "{date}"
base:
  mmdebstrap:
    suite: bookworm
    include: [linux-image-cloud-amd64, systemd-sysv]
disk:
  size: 2GiB
provisioners:
  - shell:
      inline:
        - echo hello > /etc/motd
  - file:
      source: files/motd
      destination: /etc/motd
      mode: "0644"
outputs: [raw, qcow2]
"#;

fn err(src: &str) -> SpecError {
    parse_str(src, Path::new("r.yaml")).expect_err("recipe should be rejected")
}

#[track_caller]
fn assert_err(src: &str, line: u64, field: &str, needle: &str) {
    let e = err(src);
    let text = e.to_string();
    let loc = e.location().expect("error has a location");
    assert_eq!(loc.file, Path::new("r.yaml"), "{text}");
    assert_eq!(loc.line, line, "wrong line in: {text}");
    assert!(text.starts_with(&format!("r.yaml:{line}:")), "{text}");
    assert!(text.contains(field), "field {field:?} missing in: {text}");
    assert!(text.contains(needle), "{needle:?} missing in: {text}");
}

#[test]
fn good_recipe_parses() {
    let r = parse_str(GOOD, Path::new("r.yaml")).unwrap();
    assert_eq!(r.image.name, "debian-minimal");
    assert_eq!(r.disk.size.0, 2 << 30);
    assert_eq!(r.provisioners.len(), 2);
    assert_eq!(r.outputs, vec![OutputFormat::Raw, OutputFormat::Qcow2]);
    match &r.base {
        Base::Mmdebstrap(m) => {
            assert_eq!(m.variant, "apt");
            assert_eq!(m.components, vec!["main"]);
        }
        other => panic!("unexpected base {other:?}"),
    }
}

#[test]
fn malformed_yaml_is_located() {
    assert_err("version: 1\nimage: [unclosed\n", 2, "image", "");
    let e = err("version: 1\nimage:\n  name: a\n name: b\n");
    assert!(e.location().unwrap().line >= 3, "{e}");
}

#[test]
fn unknown_field_is_named() {
    let src = GOOD.replace("  size: 2GiB\n", "  size: 2GiB\n  colour: blue\n");
    assert_err(&src, 11, "disk.colour", "unknown field `colour`");
}

#[test]
fn wrong_type_names_field_path() {
    let src = GOOD.replace("        - echo hello > /etc/motd\n", "        - [1, 2]\n");
    assert_err(
        &src,
        14,
        "provisioners[0].shell.inline[0]",
        "expected a string, found a list",
    );
}

#[test]
fn missing_base_is_reported() {
    let src = "version: 1\nimage:\n  name: x\n";
    let e = err(src);
    assert!(e.to_string().contains("missing field `base`"), "{e}");
    assert!(e.to_string().starts_with("r.yaml:"), "{e}");
}

#[test]
fn path_escaping_recipe_dir_is_refused() {
    let src = GOOD.replace("source: files/motd", "source: ../../etc/shadow");
    assert_err(
        &src,
        16,
        "provisioners[1].file.source",
        "leaves the recipe's directory",
    );
    let src = GOOD.replace("source: files/motd", "source: /etc/shadow");
    assert_err(&src, 16, "provisioners[1].file.source", "absolute");
    // explicitly allowed
    let src = format!(
        "{}allow_paths_outside_recipe_dir: true\n",
        GOOD.replace("source: files/motd", "source: ../x")
    );
    parse_str(&src, Path::new("r.yaml")).unwrap();
}

#[test]
fn bad_size_is_located() {
    let src = GOOD.replace("size: 2GiB", "size: 2 parsecs");
    assert_err(&src, 10, "disk.size", "unknown unit");
    let src = GOOD.replace("size: 2GiB", "size: 100MiB");
    assert_err(&src, 10, "disk.size", "too small");
}

#[test]
fn semantic_errors_are_located() {
    let src = GOOD.replace("destination: /etc/motd", "destination: etc/motd");
    assert_err(
        &src,
        17,
        "provisioners[1].file.destination",
        "absolute path",
    );
    let src = GOOD.replace("mode: \"0644\"", "mode: \"rwx\"");
    assert_err(&src, 18, "provisioners[1].file.mode", "octal");
    let src = GOOD.replace("version: 1\n", "version: 7\n");
    assert_err(&src, 1, "version", "unsupported recipe version 7");
    let src = GOOD.replace("name: debian-minimal", "name: Debian Minimal");
    assert_err(&src, 3, "image.name", "lowercase");
    let src = GOOD.replace("  size: 2GiB\n", "  size: 2GiB\n  boot: []\n");
    assert_err(&src, 11, "disk.boot", "expected at least one boot method");
    use BootMode::{Bios, Uefi};
    for (boot, want) in [
        ("[bios]", vec![Bios]),
        ("[bios, uefi]", vec![Bios, Uefi]),
        ("[uefi]", vec![Uefi]),
    ] {
        let src = GOOD.replace("  size: 2GiB\n", &format!("  size: 2GiB\n  boot: {boot}\n"));
        let r = parse_str(&src, Path::new("r.yaml")).unwrap_or_else(|e| panic!("{boot}: {e}"));
        assert_eq!(r.disk.boot, want, "{boot}");
    }
    let src = GOOD.replace("version: \"{date}\"", "version: \"{build}\"");
    assert_err(&src, 4, "image.version", "unknown placeholder {build}");
}

#[test]
fn shell_needs_inline_or_script() {
    let src = GOOD.replace(
        "      inline:\n        - echo hello > /etc/motd\n",
        "      env: {A: b}\n",
    );
    assert_err(&src, 12, "provisioners[0].shell", "exactly one of");
}

#[test]
fn deep_or_huge_yaml_is_rejected_cleanly() {
    let deep = format!(
        "version: 1\nimage: {}{}\n",
        "[".repeat(200),
        "]".repeat(200)
    );
    let e = err(&deep);
    assert!(e.location().is_some(), "{e}");
    let huge = "#".repeat(MAX_RECIPE_BYTES + 1);
    assert!(matches!(err(&huge), SpecError::TooLarge { .. }));
    // alias bomb
    let mut bomb = String::from("version: 1\na0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        let p = i - 1;
        bomb.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    let _ = err(&bomb);
}

#[test]
fn duplicate_keys_are_refused() {
    let src = GOOD.replace("  size: 2GiB\n", "  size: 2GiB\n  size: 3GiB\n");
    let e = err(&src);
    assert!(e.to_string().to_lowercase().contains("duplicate"), "{e}");
}

#[test]
fn committed_schema_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/recipe.schema.json");
    let fresh = schema_json();
    if std::env::var_os("WEBAKE_BLESS").is_some() {
        std::fs::write(&path, &fresh).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "docs/recipe.schema.json is stale; regenerate with `WEBAKE_BLESS=1 cargo test -p webake-spec committed_schema_is_current`"
    );
}

#[test]
fn example_recipes_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../recipes");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "yaml") {
            load(&p).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 1, "no recipes found in {}", dir.display());
}

/// A temporary directory removed on drop (also when the test fails).
pub(crate) struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "webake-spec-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.0.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The error text of a rejected recipe, one error per line.
fn all_errors(src: &str) -> String {
    err(src).to_string()
}

#[test]
fn every_error_is_reported_in_one_run_with_what_is_expected() {
    let src = r#"version: "one"
image:
  name: x
base:
  mmdebstrap:
    suite: bookwrom
disk:
  size: 2GB
provisioners:
  - file:
      source: a
      destinaton: /etc/a
  - shel:
      inline: [true]
outputs: [qcow]
"#;
    let e = err(src);
    assert!(
        matches!(&e, SpecError::Many { errors, omitted: 0 } if errors.len() == 7),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        "\
r.yaml:1:10: version: expected the recipe format version, the number 1, found the string \"one\"
r.yaml:6:5: base.mmdebstrap.suite: unknown suite `bookwrom`, did you mean `bookworm`? (expected a Debian or Ubuntu codename or alias)
r.yaml:8:3: disk.size: 2GB is 2000000000 bytes, not a whole number of MiB; write 2GiB or 1907MiB
r.yaml:11:7: provisioners[0].file.destination: missing field `destination`: expected the absolute path to copy to, inside the image
r.yaml:12:7: provisioners[0].file.destinaton: unknown field `destinaton`, did you mean `destination`?
r.yaml:13:5: provisioners[1]: unknown step kind `shel`, did you mean `shell`? (expected one of `shell`, `file`, `ansible-local`, `ansible`)
r.yaml:15:11: outputs[0]: unknown output format `qcow`, did you mean `qcow2`? (expected one of `raw`, `qcow2`)"
    );
    assert_eq!(e.location().unwrap().line, 1);
    assert_eq!(e.errors().len(), 7);
}

#[test]
fn unknown_field_suggests_the_closest_or_lists_them() {
    let src = GOOD.replace("destination: /etc/motd", "destinaton: /etc/motd");
    let text = all_errors(&src);
    assert!(
        text.contains(
            "r.yaml:17:7: provisioners[1].file.destinaton: unknown field `destinaton`, did you mean `destination`?"
        ),
        "{text}"
    );
    let src = GOOD.replace("  size: 2GiB\n", "  size: 2GiB\n  colour: blue\n");
    assert_eq!(
        all_errors(&src),
        "r.yaml:11:3: disk.colour: unknown field `colour`; expected one of `size`, `filesystem`, `boot`, `kernel_cmdline`, `esp_size`"
    );
}

#[test]
fn suite_typos_are_errors_and_unknown_suites_warnings() {
    let src = GOOD.replace("suite: bookworm", "suite: bookwrom");
    assert_err(&src, 7, "base.mmdebstrap.suite", "did you mean `bookworm`?");
    // plausible but unknown: loads, with a located warning
    let d = TempDir::new("suite");
    d.write("files/motd", "hi\n");
    let r = d.write(
        "r.yaml",
        &GOOD.replace("suite: bookworm", "suite: zanzibar"),
    );
    let l = load(&r).unwrap();
    assert_eq!(l.warnings.len(), 1, "{:?}", l.warnings);
    let w = l.warnings[0].to_string();
    assert!(
        w.starts_with(&format!(
            "{}:7:5: base.mmdebstrap.suite: suite `zanzibar`",
            r.display()
        )),
        "{w}"
    );
    let l = load(&d.write("r.yaml", GOOD)).unwrap();
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
}

#[test]
fn decimal_sizes_say_what_to_write() {
    let src = GOOD.replace("size: 2GiB", "size: 2GB");
    assert_eq!(
        all_errors(&src),
        "r.yaml:10:3: disk.size: 2GB is 2000000000 bytes, not a whole number of MiB; write 2GiB or 1907MiB"
    );
}

#[test]
fn version_must_be_the_number_one() {
    let src = GOOD.replace("version: 1\n", "version: \"one\"\n");
    assert_eq!(
        all_errors(&src),
        "r.yaml:1:10: version: expected the recipe format version, the number 1, found the string \"one\""
    );
    let src = GOOD.replace("version: 1\n", "version: 99999999999\n");
    assert!(
        all_errors(&src).contains(
            "expected the recipe format version, the number 1, found the number 99999999999"
        ),
        "{}",
        all_errors(&src)
    );
}

#[test]
fn bad_indentation_names_the_line_and_what_is_expected() {
    let text = all_errors("version: 1\nimage:\n  name: a\n name: b\n");
    assert!(!text.contains("?"), "{text}");
    assert!(
        text.starts_with("r.yaml:4:2: invalid YAML")
            && text.contains("expected the keys of one mapping to start in the same column")
            && text.contains("indented by 1 space(s), the line above by 2"),
        "{text}"
    );
    let text = all_errors(&GOOD.replace(
        "    suite: bookworm\n",
        "    suite: bookworm\n   mirror: x\n",
    ));
    assert!(text.starts_with("r.yaml:8:4: base: invalid YAML"), "{text}");
}

#[test]
fn errors_are_bounded() {
    let mut src = String::from(
        "version: 1\nimage: {name: x}\nbase: {mmdebstrap: {suite: bookworm}}\nprovisioners:\n",
    );
    for i in 0..30 {
        src.push_str(&format!(
            "  - file: {{source: a, destination: /a, mod{i}: x}}\n"
        ));
    }
    let e = err(&src);
    let SpecError::Many { errors, omitted } = &e else {
        panic!("{e}")
    };
    assert_eq!(errors.len(), MAX_ERRORS);
    assert_eq!(*omitted, 10);
    assert!(
        e.to_string()
            .ends_with("... and 10 more error(s) not shown (at most 20 are reported at once)"),
        "{e}"
    );
}

#[test]
fn missing_required_fields_say_what_they_are() {
    assert_eq!(
        all_errors("version: 1\nimage: {name: x}\n"),
        "r.yaml:1:1: base: missing field `base`: expected where the root filesystem comes from, e.g. `base: {mmdebstrap: {suite: bookworm}}`"
    );
    // a missing required field does not hide the other errors
    let text = all_errors("image: {name: X}\nbase: {mmdebstrap: {suite: bookworm}}\n");
    assert_eq!(
        text,
        "r.yaml:1:1: version: missing field `version`: expected the recipe format version, `version: 1`\n\
         r.yaml:1:9: image.name: name \"X\" may only contain lowercase letters, digits, '-', '.', '_' and must start with a letter or digit"
    );
}

#[test]
fn missing_input_file_is_located_and_named_once() {
    let d = TempDir::new("missing");
    let r = d.write("r.yaml", GOOD);
    let e = load(&r).unwrap_err();
    let text = e.to_string();
    assert_eq!(
        text,
        format!(
            "{}:16:7: provisioners[1].file.source: expected an existing file or directory, found nothing at files/motd (relative to the recipe's directory)",
            r.display()
        )
    );
    assert_eq!(text.matches("r.yaml").count(), 1, "{text}");
    // parse_str does not look at the filesystem
    parse_str(GOOD, Path::new("r.yaml")).unwrap();
}
