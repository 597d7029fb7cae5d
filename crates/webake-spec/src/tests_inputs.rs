//! Inputs: files a recipe names, and text that ends up in generated files and logs.

use std::path::Path;

use crate::tests::TempDir;
use crate::*;

const BASE: &str = "version: 1\nimage: {name: x}\n";

fn err_text(src: &str) -> String {
    parse_str(src, Path::new("r.yaml"))
        .expect_err("recipe should be rejected")
        .to_string()
}

#[test]
fn symlink_out_of_the_recipe_dir_is_refused_unless_allowed() {
    let outside = TempDir::new("outside");
    std::fs::write(outside.0.join("secret"), "host file\n").unwrap();
    let d = TempDir::new("symlink");
    std::fs::create_dir_all(d.0.join("files")).unwrap();
    std::os::unix::fs::symlink(&outside.0, d.0.join("files/link")).unwrap();
    std::os::unix::fs::symlink(outside.0.join("secret"), d.0.join("motd")).unwrap();
    let body = "base: {mmdebstrap: {suite: bookworm}}\nprovisioners:\n  - file:\n      source: files/link/secret\n      destination: /etc/a\n  - file: {source: motd, destination: /etc/motd}\n";
    let r = d.write("r.yaml", &format!("{BASE}{body}"));
    let e = load(&r).unwrap_err();
    let canon = std::fs::canonicalize(&outside.0).unwrap();
    assert_eq!(
        e.to_string(),
        format!(
            "{r}:6:7: provisioners[0].file.source: files/link/secret resolves to {o}/secret, outside the recipe's directory (through a symlink); expected a path inside it (or set allow_paths_outside_recipe_dir: true)\n\
             {r}:8:12: provisioners[1].file.source: motd resolves to {o}/secret, outside the recipe's directory (through a symlink); expected a path inside it (or set allow_paths_outside_recipe_dir: true)",
            r = r.display(),
            o = canon.display()
        )
    );
    assert!(matches!(e, SpecError::Many { .. }));
    // the lexical check alone would have let both through
    parse_str(&format!("{BASE}{body}"), Path::new("r.yaml")).unwrap();
    // explicitly allowed
    let r = d.write(
        "r.yaml",
        &format!("{BASE}{body}allow_paths_outside_recipe_dir: true\n"),
    );
    load(&r).unwrap();
    // a symlink that stays inside is fine
    std::fs::write(d.0.join("files/real"), "x").unwrap();
    std::os::unix::fs::symlink("real", d.0.join("files/alias")).unwrap();
    let r = d.write(
        "r.yaml",
        &format!("{BASE}base: {{mmdebstrap: {{suite: bookworm}}}}\nprovisioners:\n  - file: {{source: files/alias, destination: /a}}\n"),
    );
    load(&r).unwrap();
}

#[test]
fn every_kind_of_recipe_path_is_resolved() {
    let outside = TempDir::new("outside2");
    let d = TempDir::new("kinds");
    std::os::unix::fs::symlink(&outside.0, d.0.join("out")).unwrap();
    let body = "base: {mmdebstrap: {suite: noble, keyrings: [out/k.gpg]}}
provisioners:
  - shell: {script: out/s.sh}
  - ansible-local:
      playbook_file: [out/a.yml]
      playbook_dir: out
      role_paths: [out/roles]
      collection_paths: [out]
      group_vars: out
      host_vars: out
      galaxy_file: out/g.yml
  - ansible: {playbook_file: out/b.yml, role_paths: [out], collection_paths: [out], group_vars: out, host_vars: out}
";
    for f in ["k.gpg", "s.sh", "a.yml", "g.yml", "b.yml"] {
        std::fs::write(outside.0.join(f), "x").unwrap();
    }
    std::fs::create_dir(outside.0.join("roles")).unwrap();
    let r = d.write("r.yaml", &format!("{BASE}{body}"));
    let e = load(&r).unwrap_err();
    let fields: Vec<String> = e
        .errors()
        .iter()
        .map(|e| match e {
            SpecError::Invalid { field, message, .. } => {
                assert!(
                    message.contains("outside the recipe's directory"),
                    "{message}"
                );
                field.clone()
            }
            other => panic!("{other}"),
        })
        .collect();
    assert_eq!(
        fields,
        [
            "base.mmdebstrap.keyrings[0]",
            "provisioners[0].shell.script",
            "provisioners[1].ansible-local.playbook_file[0]",
            "provisioners[1].ansible-local.playbook_dir",
            "provisioners[1].ansible-local.role_paths[0]",
            "provisioners[1].ansible-local.collection_paths[0]",
            "provisioners[1].ansible-local.group_vars",
            "provisioners[1].ansible-local.host_vars",
            "provisioners[1].ansible-local.galaxy_file",
            "provisioners[2].ansible.playbook_file",
            "provisioners[2].ansible.role_paths[0]",
            "provisioners[2].ansible.collection_paths[0]",
            "provisioners[2].ansible.group_vars",
            "provisioners[2].ansible.host_vars",
        ]
    );
}

#[test]
fn files_and_directories_are_told_apart() {
    let d = TempDir::new("kind");
    d.write("pb.yml", "- hosts: all\n");
    d.write("roles", "not a directory");
    let r = d.write(
        "r.yaml",
        &format!("{BASE}base: {{mmdebstrap: {{suite: bookworm}}}}\nprovisioners:\n  - ansible-local: {{playbook_file: ., role_paths: [roles, pb.yml]}}\n"),
    );
    let text = load(&r).unwrap_err().to_string();
    let r = r.display();
    assert_eq!(
        text,
        format!(
            "{r}:5:21: provisioners[0].ansible-local.playbook_file: expected a file, found the directory .\n\
             {r}:5:52: provisioners[0].ansible-local.role_paths[0]: expected a directory, found the file roles\n\
             {r}:5:59: provisioners[0].ansible-local.role_paths[1]: expected a directory, found the file pb.yml"
        )
    );
}

#[test]
fn absolute_keyrings_obey_allow_paths_outside_recipe_dir() {
    let body = "base: {mmdebstrap: {suite: noble, keyrings: [/usr/share/keyrings/ubuntu-archive-keyring.gpg, ../k.gpg]}}\n";
    assert_eq!(
        err_text(&format!("{BASE}{body}")),
        "r.yaml:3:46: base.mmdebstrap.keyrings[0]: path \"/usr/share/keyrings/ubuntu-archive-keyring.gpg\" is absolute; expected a path relative to the recipe's directory (or set allow_paths_outside_recipe_dir: true)\n\
         r.yaml:3:94: base.mmdebstrap.keyrings[1]: path \"../k.gpg\" leaves the recipe's directory; expected a path inside it (or set allow_paths_outside_recipe_dir: true)"
    );
    parse_str(
        &format!("{BASE}{body}allow_paths_outside_recipe_dir: true\n"),
        Path::new("r.yaml"),
    )
    .unwrap();
    // and they must exist when loaded
    let d = TempDir::new("keyring");
    let r = d.write(
        "r.yaml",
        &format!("{BASE}base: {{mmdebstrap: {{suite: noble, keyrings: [/nonexistent/k.gpg]}}}}\nallow_paths_outside_recipe_dir: true\n"),
    );
    assert_eq!(
        load(&r).unwrap_err().to_string(),
        format!(
            "{}:3:46: base.mmdebstrap.keyrings[0]: expected an existing file, found nothing at /nonexistent/k.gpg",
            r.display()
        )
    );
}

/// Each field that reaches a log line, an apt source, an inventory or the command line refuses
/// control characters and line breaks, with its location.
#[test]
fn control_characters_and_newlines_are_refused_where_they_could_inject() {
    let mm = |extra: &str| format!("{BASE}base: {{mmdebstrap: {{suite: bookworm, {extra}}}}}\n");
    let step = |s: &str| {
        format!("{BASE}base: {{mmdebstrap: {{suite: bookworm}}}}\nprovisioners:\n  - {s}\n")
    };
    let cases = [
        (
            "version: 1\nimage: {name: \"x\\ny\"}\nbase: {mmdebstrap: {suite: bookworm}}\n"
                .to_string(),
            "image.name",
        ),
        (
            step("shell: {name: \"step\\n[2. other] forged\", inline: [true]}"),
            "provisioners[0].shell.name",
        ),
        (
            step("file: {name: \"a\\u001b[2J\", source: a, destination: /a}"),
            "provisioners[0].file.name",
        ),
        (
            mm("mirror: \"http://deb.debian.org/debian\\ndeb http://evil/ x main\""),
            "base.mmdebstrap.mirror",
        ),
        (
            mm("components: [\"main\\ncontrib\"]"),
            "base.mmdebstrap.components[0]",
        ),
        (
            mm("keyrings: [\"k\\n.gpg\"]"),
            "base.mmdebstrap.keyrings[0]",
        ),
        (
            mm("include: [\"vim\\u0000\"]"),
            "base.mmdebstrap.include[0]",
        ),
        (
            step("ansible-local: {playbook_file: a.yml, inventory_groups: [\"web\\n[all:vars]\"]}"),
            "provisioners[0].ansible-local.inventory_groups[0]",
        ),
        (
            step("ansible: {playbook_file: a.yml, inventory_groups: [\"web\\rx\"]}"),
            "provisioners[0].ansible.inventory_groups[0]",
        ),
        (
            format!(
                "{BASE}base: {{mmdebstrap: {{suite: bookworm}}}}\nnetwork: {{allow: [\"127.0.0.1:8080\\n\"]}}\n"
            ),
            "network.allow[0]",
        ),
        (
            format!("{BASE}base: {{mmdebstrap: {{suite: \"bookworm\\n\"}}}}\n"),
            "base.mmdebstrap.suite",
        ),
    ];
    for (src, field) in cases {
        let e = parse_str(&src, Path::new("r.yaml")).expect_err(&src);
        let SpecError::Invalid {
            location,
            field: f,
            message,
        } = &e
        else {
            panic!("one located error expected for {src}: {e}");
        };
        assert_eq!(f, field, "{e}");
        assert!(location.line >= 2, "{e}");
        assert!(
            message.contains("without control characters or line breaks, found U+"),
            "{e}"
        );
    }
    // plain text is fine
    parse_str(
        &step("ansible-local: {name: web servers, playbook_file: a.yml, inventory_groups: [web, db_1]}"),
        Path::new("r.yaml"),
    )
    .unwrap();
}

#[test]
fn secrets_outside_the_operators_allowlist_are_refused_where_they_are_requested() {
    let d = TempDir::new("secrets");
    let r = d.write(
        "r.yaml",
        &format!(
            "{BASE}base: {{mmdebstrap: {{suite: bookworm}}}}\nprovisioners:\n  - shell:\n      secret_env: [AWS_SECRET_ACCESS_KEY, GITHUB_TOKEN]\n      inline: [\"true\"]\n"
        ),
    );
    let with = |allow: &[&str]| LoadOptions {
        secret_env_allow: Some(allow.iter().map(|s| s.to_string()).collect()),
        ..LoadOptions::default()
    };
    let e = load_with(&r, &with(&[])).unwrap_err().to_string();
    assert!(
        e.contains(":6:20: provisioners[0].shell.secret_env[0]:")
            && e.contains("does not allow recipes to read AWS_SECRET_ACCESS_KEY")
            && e.contains("allowed: nothing")
            && e.contains("provisioners[0].shell.secret_env[1]"),
        "{e}"
    );
    let e = load_with(&r, &with(&["AWS_*"])).unwrap_err().to_string();
    assert!(
        !e.contains("AWS_SECRET_ACCESS_KEY") && e.contains("GITHUB_TOKEN"),
        "{e}"
    );
    load_with(&r, &with(&["AWS_*", "GITHUB_TOKEN"])).unwrap();
    // No list: the library does not check (the CLI always passes one).
    load(&r).unwrap();
}
