//! `architectures`: validation and the per-architecture variants of a recipe.

use super::*;

const MULTI: &str = r#"version: 1
image:
  name: bastion
architectures: [x86_64, arm64]
base:
  mmdebstrap:
    suite: bookworm
    include:
      - linux-image-cloud-{debian_arch}
      - systemd-sysv
disk:
  size: 2GiB
"#;

fn load_text(src: &str) -> Result<LoadedRecipe, SpecError> {
    let path = Path::new("r.yaml");
    let a = analyze(src, path, &LoadOptions::default(), None)?;
    Ok(LoadedRecipe {
        path: path.into(),
        dir: ".".into(),
        source: src.into(),
        recipe: a.recipe,
        variables: a.variables,
        warnings: a.warnings,
        masked: a.masked,
        secret_steps: a.secret_steps,
    })
}

#[test]
fn a_recipe_of_two_architectures_has_one_variant_each() {
    let r = load_text(MULTI).unwrap();
    assert_eq!(
        r.architectures(),
        [Some(Architecture::X86_64), Some(Architecture::Arm64)]
    );
    let v = r.variants();
    assert_eq!(v.len(), 2);
    for (variant, (arch, kernel)) in v.iter().zip([
        (Architecture::X86_64, "linux-image-cloud-amd64"),
        (Architecture::Arm64, "linux-image-cloud-arm64"),
    ]) {
        assert_eq!(variant.architecture(), Some(arch));
        assert_eq!(variant.variants().len(), 1, "a variant is one architecture");
        let Base::Mmdebstrap(m) = &variant.recipe.base else {
            panic!("mmdebstrap base")
        };
        assert_eq!(m.architecture.as_deref(), Some(arch.debian()));
        assert_eq!(m.include[0], kernel);
        assert_eq!(variant.masked_recipe().architectures, [arch]);
    }
}

#[test]
fn without_architectures_the_base_or_the_host_decides() {
    let host = load_text(&MULTI.replace("architectures: [x86_64, arm64]\n", "")).unwrap();
    assert_eq!(host.architectures(), [Some(Architecture::host())]);
    let v = host.variants();
    let Base::Mmdebstrap(m) = &v[0].recipe.base else {
        panic!()
    };
    assert_eq!(
        m.include[0],
        format!("linux-image-cloud-{}", Architecture::host().debian())
    );
    let based = load_text(
        &MULTI
            .replace("architectures: [x86_64, arm64]\n", "")
            .replace(
                "    suite: bookworm\n",
                "    suite: bookworm\n    architecture: arm64\n",
            ),
    )
    .unwrap();
    assert_eq!(based.architectures(), [Some(Architecture::Arm64)]);
    let armhf = load_text(
        &MULTI
            .replace("architectures: [x86_64, arm64]\n", "")
            .replace(
                "    suite: bookworm\n",
                "    suite: bookworm\n    architecture: armhf\n",
            ),
    )
    .unwrap();
    assert_eq!(
        armhf.architectures(),
        [None],
        "no AWS name, baked as the base says"
    );
    let Base::Mmdebstrap(m) = &armhf.variants()[0].recipe.base else {
        panic!()
    };
    assert_eq!(m.include[0], "linux-image-cloud-armhf");
}

#[track_caller]
fn assert_located(src: &str, line: u64, needle: &str) {
    let e = parse_str(src, Path::new("r.yaml")).expect_err("rejected");
    let text = e.to_string();
    assert!(
        text.contains(&format!("r.yaml:{line}:")),
        "line {line} in: {text}"
    );
    assert!(text.contains(needle), "{needle:?} in: {text}");
}

#[test]
fn architecture_mistakes_are_located() {
    assert_located(
        &MULTI.replace("[x86_64, arm64]", "[x86_64, arm46]"),
        4,
        "arm46",
    );
    assert_located(
        &MULTI.replace("[x86_64, arm64]", "[arm64, arm64]"),
        4,
        "listed twice",
    );
    assert_located(
        &MULTI.replace(
            "    suite: bookworm\n",
            "    suite: bookworm\n    architecture: amd64\n",
        ),
        8,
        "contradicts `architectures`",
    );
    assert_located(&format!("{MULTI}  boot: [bios, uefi]\n"), 13, "UEFI only");
    assert_located(
        &MULTI.replace("{debian_arch}", "{arch}"),
        9,
        "the only placeholder here is `{debian_arch}`",
    );
    let ami = "version: 1\nimage:\n  name: a\narchitectures: [x86_64, arm64]\nbase:\n  ami:\n    id: ami-0123\n    region: eu-west-1\n";
    assert_located(ami, 4, "an AMI base has one architecture");
}
