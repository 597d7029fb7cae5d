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
        "expected string",
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
    let src = GOOD.replace("  size: 2GiB\n", "  size: 2GiB\n  boot: [bios]\n");
    assert_err(&src, 11, "disk.boot", "UEFI boot is required");
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
