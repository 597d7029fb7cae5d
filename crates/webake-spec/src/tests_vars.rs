//! Variables: declaration, precedence, interpolation, secrets, errors.

use std::path::{Path, PathBuf};

use crate::tests::TempDir;
use crate::*;

const RECIPE: &str = r#"version: 1
variables:
  release: {type: string, default: "1.10", description: the release}
  region:
    type: string
    validation: {regex: "(eu|us)-[a-z]+-[0-9]", message: expected an AWS region such as eu-west-1}
  replicas: {type: number, default: 3}
  debug: {type: bool, default: false}
  token: {type: string, secret: true}
image:
  name: app
  version: "{var.release}-{date}"
  description: App for {var.region}
base: {mmdebstrap: {suite: bookworm}}
provisioners:
  - shell:
      inline:
        - echo {var.replicas} > /etc/replicas
        - 'curl -H "Authorization: {var.token}" https://example.invalid/'
      env: {DEBUG: "{var.debug}"}
  - file: {source: "files/{var.region}.conf", destination: /etc/app.conf}
  - ansible-local:
      playbook_file: pb.yml
      extra_vars: {region: "{var.region}", host: "{{ inventory_hostname }}"}
  - ansible: {playbook_file: pb.yml, extra_vars: {replicas: "{var.replicas}"}}
test:
  checks:
    - name: region
      run: cat /etc/region
      expect_stdout: "{var.region}"
"#;

struct Fixture {
    dir: TempDir,
    recipe: PathBuf,
}

fn fixture(recipe: &str) -> Fixture {
    let dir = TempDir::new("vars");
    for r in ["eu-west-1", "eu-central-1", "eu-north-1", "us-east-1"] {
        dir.write(&format!("files/{r}.conf"), r);
    }
    dir.write("pb.yml", "- hosts: all\n");
    let recipe = dir.write("r.yaml", recipe);
    Fixture { dir, recipe }
}

fn inputs(cli: &[(&str, &str)], files: &[&Path], env: &[(&str, &str)]) -> LoadOptions {
    let pairs = |v: &[(&str, &str)]| {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    LoadOptions {
        vars: VarInputs {
            cli: pairs(cli),
            files: files.iter().map(|p| p.to_path_buf()).collect(),
            env: [("WEBAKE_VAR_token".to_string(), "s3cr3t-t0ken".to_string())]
                .into_iter()
                .chain(pairs(env))
                .collect(),
        },
        ..LoadOptions::default()
    }
}

fn var<'a>(l: &'a LoadedRecipe, name: &str) -> &'a ResolvedVariable {
    l.variables.iter().find(|v| v.name == name).unwrap()
}

#[test]
fn command_line_beats_var_files_beats_environment_beats_default() {
    let f = fixture(RECIPE);
    let f1 = f.dir.write("one.yaml", "region: eu-west-1\nreplicas: 5\n");
    let f2 = f.dir.write("two.yaml", "region: eu-central-1\n");
    let env = [
        ("WEBAKE_VAR_region", "us-east-1"),
        ("WEBAKE_VAR_debug", "true"),
        ("PATH", "/usr/bin"),
    ];
    let all = load_with(
        &f.recipe,
        &inputs(
            &[("region", "eu-west-2"), ("region", "eu-north-1")],
            &[&f1, &f2],
            &env,
        ),
    )
    .unwrap();
    let region = var(&all, "region");
    assert_eq!(
        (region.value(), &region.origin),
        ("eu-north-1", &VarOrigin::CommandLine)
    );
    let replicas = var(&all, "replicas");
    assert_eq!(
        (replicas.value(), &replicas.origin),
        ("5", &VarOrigin::File(f1.clone()))
    );
    let debug = var(&all, "debug");
    assert_eq!(
        (debug.value(), &debug.origin),
        ("true", &VarOrigin::Environment("WEBAKE_VAR_debug".into()))
    );
    let release = var(&all, "release");
    assert_eq!(
        (release.value(), &release.origin),
        ("1.10", &VarOrigin::Default)
    );

    let files = load_with(&f.recipe, &inputs(&[], &[&f1, &f2], &env)).unwrap();
    assert_eq!(var(&files, "region").value(), "eu-central-1");
    assert_eq!(var(&files, "region").origin, VarOrigin::File(f2.clone()));
    let env_only = load_with(&f.recipe, &inputs(&[], &[], &env)).unwrap();
    assert_eq!(var(&env_only, "region").value(), "us-east-1");
    assert!(env_only.warnings.is_empty(), "{:?}", env_only.warnings);
}

#[test]
fn values_replace_references_in_the_documented_fields() {
    let f = fixture(RECIPE);
    let l = load_with(&f.recipe, &inputs(&[("region", "eu-west-1")], &[], &[])).unwrap();
    let r = &l.recipe;
    let at: jiff::Timestamp = "2026-11-25T13:14:56Z".parse().unwrap();
    assert_eq!(
        r.image.version.as_ref().unwrap().render(at),
        "1.10-20261125"
    );
    assert_eq!(r.image.description.as_deref(), Some("App for eu-west-1"));
    let Provisioner::Shell(s) = &r.provisioners[0] else {
        panic!()
    };
    assert_eq!(s.inline[0], "echo 3 > /etc/replicas");
    assert_eq!(
        s.inline[1],
        "curl -H \"Authorization: s3cr3t-t0ken\" https://example.invalid/"
    );
    assert_eq!(s.env["DEBUG"], "false");
    let Provisioner::File(fs) = &r.provisioners[1] else {
        panic!()
    };
    assert_eq!(fs.source.as_str(), "files/eu-west-1.conf");
    let Provisioner::AnsibleLocal(a) = &r.provisioners[2] else {
        panic!()
    };
    assert_eq!(a.extra_vars["region"], "eu-west-1");
    assert_eq!(
        a.extra_vars["host"], "{{ inventory_hostname }}",
        "Jinja is left alone"
    );
    let Provisioner::Ansible(a) = &r.provisioners[3] else {
        panic!()
    };
    assert_eq!(a.extra_vars["replicas"], "3");
    let c = &r.test.as_ref().unwrap().checks[0];
    assert_eq!(c.expect_stdout.as_deref(), Some("eu-west-1"));
    // the source text is what was read
    assert!(l.source.contains("{var.region}"));
}

#[test]
fn secrets_are_used_but_never_shown() {
    let f = fixture(RECIPE);
    let l = load_with(&f.recipe, &inputs(&[("region", "eu-west-1")], &[], &[])).unwrap();
    let token = var(&l, "token");
    assert_eq!(token.display_value(), "(secret)");
    assert_eq!(l.secret_values(), vec!["s3cr3t-t0ken"]);
    assert!(!format!("{l:?}").contains("s3cr3t"), "Debug shows a secret");
    assert!(!format!("{token:?}").contains("s3cr3t"));
    let digest = String::from_utf8(l.digest_input()).unwrap();
    assert!(!digest.contains("s3cr3t"), "{digest}");
    let Provisioner::Shell(masked) = &l.masked_recipe().provisioners[0] else {
        panic!()
    };
    assert_eq!(
        masked.inline[1],
        "curl -H \"Authorization: (secret token)\" https://example.invalid/"
    );
    assert!(l.step_uses_secret(0));
    assert!(!l.step_uses_secret(1) && !l.step_uses_secret(2) && !l.step_uses_secret(3));

    // a secret where the value would be published is refused
    let leak = RECIPE.replace(
        "description: App for {var.region}",
        "description: \"{var.token}\"",
    );
    let e = load_with(
        &fixture(&leak).recipe,
        &inputs(&[("region", "eu-west-1")], &[], &[]),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains(
            ":13:3: image.description: secret variable `token` cannot be used in image.description"
        ),
        "{e}"
    );
    assert!(!e.to_string().contains("s3cr3t"), "{e}");
}

#[test]
fn the_digest_input_covers_the_values() {
    let f = fixture(RECIPE);
    let a = load_with(&f.recipe, &inputs(&[("region", "eu-west-1")], &[], &[])).unwrap();
    let b = load_with(&f.recipe, &inputs(&[("region", "us-east-1")], &[], &[])).unwrap();
    let a2 = load_with(
        &f.recipe,
        &inputs(&[], &[], &[("WEBAKE_VAR_region", "eu-west-1")]),
    )
    .unwrap();
    assert_ne!(a.digest_input(), b.digest_input());
    assert_eq!(
        a.digest_input(),
        a2.digest_input(),
        "where a value comes from does not matter"
    );
    assert!(a.digest_input().starts_with(a.source.as_bytes()));
    // no variables: exactly the text, as before
    let plain = fixture("version: 1\nimage: {name: x}\nbase: {mmdebstrap: {suite: bookworm}}\n");
    let l = load(&plain.recipe).unwrap();
    assert_eq!(l.digest_input(), l.source.as_bytes());
}

#[test]
fn reference_and_declaration_errors_are_located() {
    let cases = [
        (
            RECIPE.replace("App for {var.region}", "App for {var.regoin}"),
            "r.yaml:13:3: image.description: unknown variable `regoin`, did you mean `region`? (expected one of `debug`, `region`, `release`, `replicas`, `token`)",
        ),
        (
            RECIPE.replace(
                "  debug: {type: bool, default: false}\n",
                "  debug: {default: false}\n",
            ),
            "r.yaml:8:10: variables.debug.type: missing field `type`: expected the variable's type: string, number or bool",
        ),
        (
            RECIPE.replace(
                "  debug: {type: bool, default: false}\n",
                "  debug: {type: boolean, default: false}\n",
            ),
            "r.yaml:8:17: variables.debug.type: unknown variable type `boolean`; expected one of `string`, `number`, `bool`",
        ),
        (
            RECIPE.replace(
                "replicas: {type: number, default: 3}",
                "replicas: {type: number, default: three}",
            ),
            "r.yaml:7:28: variables.replicas.default: the default of number variable `replicas`: expected a number such as 3 or 2.5, found \"three\"",
        ),
        (
            RECIPE.replace("  name: app\n", "  name: \"{var.release}\"\n"),
            "r.yaml:11:9: image.name: variables are not replaced in this field; expected `{var.NAME}` only in image.version, image.description, shell inline and env values, file source, extra_vars values, test.checks run and expect_stdout",
        ),
        (
            RECIPE.replace("echo {var.replicas}", "echo {var.replicas"),
            "r.yaml:18:11: provisioners[0].shell.inline[0]: expected a variable reference `{var.NAME}` (NAME made of letters, digits and `_`), found `{var.replicas > /etc/replicas`",
        ),
        (
            RECIPE.replace("regex: \"(eu|us)-[a-z]+-[0-9]\"", "regex: \"(eu\""),
            "r.yaml:6:18: variables.region.validation.regex: expected a regular expression, found `(eu`: unclosed group",
        ),
    ];
    for (src, expected) in cases {
        let text = parse_str(&src, Path::new("r.yaml"))
            .expect_err(expected)
            .to_string();
        // `region` and `token` have no default: their missing values are reported too
        let own: Vec<&str> = text
            .lines()
            .filter(|l| !l.contains("has no value"))
            .collect();
        assert!(
            own[0].starts_with(expected),
            "expected\n{expected}\nfound\n{text}"
        );
        assert_eq!(own.len(), 1, "{text}");
    }
}

#[test]
fn a_variable_without_a_value_is_an_error_once() {
    let f = fixture(RECIPE);
    let e = load(&f.recipe).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{r}:4:3: variables.region: variable `region` has no value: expected --var region=VALUE, a --var-file that sets it, $WEBAKE_VAR_region, or a `default`\n\
             {r}:9:3: variables.token: variable `token` has no value: expected --var token=VALUE, a --var-file that sets it, $WEBAKE_VAR_token, or a `default`",
            r = f.recipe.display()
        )
    );
}

#[test]
fn given_values_are_checked_where_they_come_from() {
    let f = fixture(RECIPE);
    let vf = f.dir.write(
        "vars.yaml",
        "# values\nregion: mars\nreplicas: [1]\nnope: 1\n",
    );
    let e = load_with(
        &f.recipe,
        &inputs(
            &[
                ("region", "eu-west-1"),
                ("replicas", "many"),
                ("debug", "yes"),
                ("regoin", "x"),
            ],
            &[&vf],
            &[("WEBAKE_VAR_unused", "1")],
        ),
    )
    .unwrap_err();
    let vf = vf.display();
    assert_eq!(
        e.to_string(),
        format!(
            "{vf}:2:1: region: \"mars\" is not a valid value for `region`: expected an AWS region such as eu-west-1 (expected a match of `(eu|us)-[a-z]+-[0-9]`)\n\
             {vf}:3:11: replicas: expected a number value, found a list\n\
             {vf}:4:1: nope: no variable `nope` is declared in {r} (declared: `debug`, `region`, `release`, `replicas`, `token`)\n\
             --var replicas: number variable `replicas`: expected a number such as 3 or 2.5, found \"many\"\n\
             --var debug: bool variable `debug`: expected true or false, found \"yes\"\n\
             --var regoin: no variable `regoin` is declared in {r}, did you mean `region`? (declared: `debug`, `region`, `release`, `replicas`, `token`)",
            r = f.recipe.display()
        )
    );
    assert!(
        matches!(&e.errors()[3], SpecError::Input { origin, .. } if origin == "--var replicas")
    );
    // an environment variable for no declared variable is only a warning
    let l = load_with(
        &f.recipe,
        &inputs(
            &[("region", "eu-west-1")],
            &[],
            &[("WEBAKE_VAR_unused", "1")],
        ),
    )
    .unwrap();
    assert_eq!(l.warnings.len(), 1);
    assert!(
        l.warnings[0]
            .to_string()
            .starts_with("$WEBAKE_VAR_unused: no variable `unused` is declared"),
        "{}",
        l.warnings[0]
    );
}

#[test]
fn var_files_must_be_readable_mappings() {
    let f = fixture(RECIPE);
    let missing = f.dir.0.join("nope.yaml");
    let e = load_with(&f.recipe, &inputs(&[], &[&missing], &[])).unwrap_err();
    assert!(
        matches!(&e, SpecError::Read { path, .. } if *path == missing),
        "{e}"
    );
    let list = f.dir.write("list.yaml", "- a\n");
    let e = load_with(
        &f.recipe,
        &inputs(&[("region", "eu-west-1")], &[&list], &[]),
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}:1:1: expected a mapping of variable names to values",
            list.display()
        )
    );
    let bad = f.dir.write("bad.yaml", "region: [\n");
    let e = load_with(&f.recipe, &inputs(&[], &[&bad], &[])).unwrap_err();
    assert!(
        e.to_string().starts_with(&format!("{}:", bad.display())),
        "{e}"
    );
}

#[test]
fn a_value_must_fit_where_it_is_used() {
    let f = fixture(RECIPE);
    let e = load_with(
        &f.recipe,
        &inputs(&[("region", "eu-west-1"), ("release", "1 0")], &[], &[]),
    )
    .unwrap_err();
    assert!(
        e.to_string().ends_with(
            ":12:3: image.version: variable `release` is \"1 0\", which cannot be part of a version: expected letters, digits, '.', '-', '_' or '+'"
        ),
        "{e}"
    );
    // a source path built from a value is checked like any other path
    let e = load_with(&f.recipe, &inputs(&[("region", "eu-west-1")], &[], &[]));
    assert!(e.is_ok(), "{e:?}");
    let empty = RECIPE.replace("\"files/{var.region}.conf\"", "\"{var.release}\"");
    let e = load_with(
        &fixture(&empty).recipe,
        &inputs(&[("region", "eu-west-1"), ("release", "")], &[], &[]),
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("provisioners[1].file.source: expected a path, found an empty string"),
        "{e}"
    );
    let e = load_with(&f.recipe, &inputs(&[("region", "us-west-9")], &[], &[])).unwrap_err();
    assert!(
        e.to_string().contains(
            "provisioners[1].file.source: expected an existing file or directory, found nothing at files/us-west-9.conf"
        ),
        "{e}"
    );
}

#[test]
fn var_arguments_are_split_for_the_cli() {
    assert_eq!(
        parse_var_arg("region=eu-west-1").unwrap(),
        ("region".to_string(), "eu-west-1".to_string())
    );
    assert!(parse_var_arg("region").is_err());
}
