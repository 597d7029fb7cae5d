//! Checks that types alone cannot express. Every check adds to a report instead of stopping,
//! so one run shows every problem.

use std::path::Path;

use crate::locate::{Seg, join, key};
use crate::model::*;
use crate::suggest::{closest, unknown};
use crate::{FORMAT_VERSION, RecipePath};

#[derive(Default)]
pub(crate) struct Report {
    pub errors: Vec<(Vec<Seg>, String)>,
    pub warnings: Vec<(Vec<Seg>, String)>,
}

impl Report {
    fn err(&mut self, path: Vec<Seg>, message: impl Into<String>) {
        self.errors.push((path, message.into()));
    }
    fn warn(&mut self, path: Vec<Seg>, message: impl Into<String>) {
        self.warnings.push((path, message.into()));
    }
    fn check(&mut self, path: Vec<Seg>, r: Result<(), String>) {
        if let Err(m) = r {
            self.err(path, m);
        }
    }
}

/// Debian and Ubuntu release codenames and suite aliases webake knows. A suite close to one
/// of these is taken for a typo; any other is only a warning (the mirror decides).
pub const KNOWN_SUITES: &[&str] = &[
    // Debian, 2.0 onwards, and the aliases
    "hamm",
    "slink",
    "potato",
    "woody",
    "sarge",
    "etch",
    "lenny",
    "squeeze",
    "wheezy",
    "jessie",
    "stretch",
    "buster",
    "bullseye",
    "bookworm",
    "trixie",
    "forky",
    "duke",
    "sid",
    "experimental",
    "stable",
    "oldstable",
    "oldoldstable",
    "testing",
    "unstable",
    // Ubuntu
    "warty",
    "hoary",
    "breezy",
    "dapper",
    "edgy",
    "feisty",
    "gutsy",
    "hardy",
    "intrepid",
    "jaunty",
    "karmic",
    "lucid",
    "maverick",
    "natty",
    "oneiric",
    "precise",
    "quantal",
    "raring",
    "saucy",
    "trusty",
    "utopic",
    "vivid",
    "wily",
    "xenial",
    "yakkety",
    "zesty",
    "artful",
    "bionic",
    "cosmic",
    "disco",
    "eoan",
    "focal",
    "groovy",
    "hirsute",
    "impish",
    "jammy",
    "kinetic",
    "lunar",
    "mantic",
    "noble",
    "oracular",
    "plucky",
    "questing",
    "resolute",
    "devel",
];

const SUITE_SUFFIXES: &[&str] = &[
    "-security",
    "-updates",
    "-backports-sloppy",
    "-backports",
    "-proposed-updates",
    "-proposed",
];

const KNOWN_ARCHITECTURES: &[&str] = &[
    "amd64", "arm64", "armel", "armhf", "i386", "mips64el", "ppc64el", "riscv64", "s390x",
    "loong64", "alpha", "hppa", "m68k", "powerpc", "ppc64", "sh4", "sparc64", "x32", "ia64",
];

const VARIANTS: &[&str] = &[
    "extract",
    "custom",
    "essential",
    "apt",
    "required",
    "minbase",
    "buildd",
    "important",
    "debootstrap",
    "standard",
];

/// Refuse control characters and line breaks (they forge log lines and inject lines into
/// generated files such as apt sources and inventories).
pub(crate) fn no_control(what: &str, s: &str) -> Result<(), String> {
    match s
        .chars()
        .enumerate()
        .find(|(_, c)| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}'))
    {
        Some((i, c)) => Err(format!(
            "expected {what} without control characters or line breaks, found U+{:04X} at character {}",
            c as u32,
            i + 1
        )),
        None => Ok(()),
    }
}

fn check_name(n: &str) -> Result<(), String> {
    no_control("a name", n)?;
    if n.is_empty() || n.len() > 100 {
        return Err(format!("name {n:?} must be 1 to 100 characters"));
    }
    if !n
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | '_'))
        || !n.starts_with(|c: char| c.is_ascii_alphanumeric())
    {
        return Err(format!(
            "name {n:?} may only contain lowercase letters, digits, '-', '.', '_' and must start with a letter or digit"
        ));
    }
    Ok(())
}

fn check_suite(r: &mut Report, path: Vec<Seg>, suite: &str) {
    if let Err(m) = no_control("a suite", suite) {
        return r.err(path, m);
    }
    if suite.trim().is_empty() || !suite.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return r.err(
            path,
            format!("expected a suite or codename such as `bookworm` or `noble`, found {suite:?}"),
        );
    }
    let base = SUITE_SUFFIXES
        .iter()
        .find_map(|s| suite.strip_suffix(s))
        .unwrap_or(suite);
    if KNOWN_SUITES.contains(&base) {
        return;
    }
    match closest(base, KNOWN_SUITES.iter().copied()) {
        Some(c) => r.err(
            path,
            format!(
                "unknown suite `{suite}`, did you mean `{}`? (expected a Debian or Ubuntu codename or alias)",
                suite.replacen(base, c, 1)
            ),
        ),
        None => r.warn(
            path,
            format!(
                "suite `{suite}` is not a Debian or Ubuntu codename webake knows; the bootstrap fails if the mirror has no such suite"
            ),
        ),
    }
}

/// A source date: Unix seconds, not before 1980 (FAT and zip cannot say so) and not in the
/// future (a bake could not clamp the files it writes to it).
pub fn check_source_date(t: i64) -> Result<(), String> {
    const Y1980: i64 = 315_532_800;
    let now = jiff::Timestamp::now().as_second();
    if t < Y1980 {
        return Err(format!(
            "{t} is before 1980-01-01 (315532800), the earliest date a FAT filesystem holds"
        ));
    }
    if t > now {
        return Err(format!(
            "{t} ({}) is in the future: a source date is when the inputs were made",
            jiff::Timestamp::from_second(t)
                .map(|x| x.to_string())
                .unwrap_or_default()
        ));
    }
    Ok(())
}

fn check_env_name(k: &str) -> Result<(), String> {
    if k.is_empty()
        || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        || k.starts_with(|c: char| c.is_ascii_digit())
    {
        return Err(format!(
            "expected an environment variable name (letters, digits, `_`; not starting with a digit), found {k:?}"
        ));
    }
    Ok(())
}

fn check_inventory_group(g: &str) -> Result<(), String> {
    no_control("an inventory group", g)?;
    if g.is_empty()
        || !g
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        || !g.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(format!(
            "expected an inventory group name (letters, digits, `_`, `-`, `.`), found {g:?}"
        ));
    }
    Ok(())
}

fn mib_hint(raw: Option<&str>, bytes: u64) -> String {
    let floor = bytes >> 20;
    let ceil = floor + 1;
    let raw = raw.map(str::trim).unwrap_or_default();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (num, unit) = raw.split_at(split);
    let binary = match unit.trim() {
        "KB" | "kB" => Some("KiB"),
        "MB" => Some("MiB"),
        "GB" => Some("GiB"),
        "TB" => Some("TiB"),
        _ => None,
    };
    let shown = if raw.is_empty() {
        bytes.to_string()
    } else {
        raw.to_string()
    };
    match binary {
        Some(b) if b != "KiB" => format!(
            "{shown} is {bytes} bytes, not a whole number of MiB; write {num}{b} or {floor}MiB"
        ),
        _ => format!(
            "{shown} is {bytes} bytes, not a whole number of MiB; write {floor}MiB or {ceil}MiB"
        ),
    }
}

/// Semantic checks of a (variable-substituted) recipe. `raw` gives a scalar as written.
pub(crate) fn validate(r: &Recipe, raw: &dyn Fn(&[Seg]) -> Option<String>) -> Report {
    let mut rep = Report::default();
    if r.version != FORMAT_VERSION {
        rep.err(
            vec![key("version")],
            format!(
                "unsupported recipe version {}; expected {FORMAT_VERSION}, the only version this webake reads",
                r.version
            ),
        );
    }
    rep.check(vec![key("image"), key("name")], check_name(&r.image.name));
    if let Some(f) = &r.image.family {
        rep.check(vec![key("image"), key("family")], check_name(f));
    }
    if let Some(role) = &r.image.role {
        rep.check(vec![key("image"), key("role")], no_control("a role", role));
    }
    if let Some(t) = r.image.source_date_epoch {
        rep.check(
            vec![key("image"), key("source_date_epoch")],
            check_source_date(t),
        );
    }
    match &r.base {
        Base::Mmdebstrap(m) => mmdebstrap(&mut rep, m, r.allow_paths_outside_recipe_dir),
        Base::Ami(a) => {
            if !a.id.starts_with("ami-") {
                rep.err(
                    vec![key("base"), key("ami"), key("id")],
                    format!("expected an AMI id (ami-…), found {:?}", a.id),
                );
            }
            rep.check(
                vec![key("base"), key("ami"), key("region")],
                no_control("a region", &a.region),
            );
        }
        Base::Image(i) => rep.check(vec![key("base"), key("image")], no_control("an image", i)),
    }
    architectures(&mut rep, r);
    disk(&mut rep, &r.disk, raw);
    if r.outputs.is_empty() {
        rep.err(
            vec![key("outputs")],
            "expected at least one output format (raw, qcow2)",
        );
    }
    for (i, a) in r.network.allow.iter().enumerate() {
        let path = vec![key("network"), key("allow"), Seg::Index(i)];
        match no_control("an address", a) {
            Err(m) => rep.err(path, m),
            Ok(()) => rep.check(path, NetworkAllow::parse(a).map(|_| ())),
        }
    }
    for (i, p) in r.provisioners.iter().enumerate() {
        step(&mut rep, i, p, r.allow_paths_outside_recipe_dir);
    }
    if let Some(t) = &r.test {
        if t.timeout_secs == 0 || t.timeout_secs > 3600 {
            rep.err(
                vec![key("test"), key("timeout_secs")],
                format!(
                    "expected a timeout between 1 and 3600 seconds, found {}",
                    t.timeout_secs
                ),
            );
        }
        for (i, c) in t.checks.iter().enumerate() {
            rep.check(
                vec![key("test"), key("checks"), Seg::Index(i), key("name")],
                no_control("a check name", &c.name),
            );
        }
    }
    rep
}

/// `architectures`: no duplicates, agreeing with the base's, one for an AMI base, and arm64
/// boots UEFI only.
fn architectures(rep: &mut Report, r: &Recipe) {
    let at = |i: usize| vec![key("architectures"), Seg::Index(i)];
    for (i, a) in r.architectures.iter().enumerate() {
        if r.architectures[..i].contains(a) {
            rep.err(at(i), format!("`{a}` is listed twice"));
        }
    }
    match &r.base {
        Base::Mmdebstrap(m) if !r.architectures.is_empty() => {
            if let Some(b) = &m.architecture {
                let same = Architecture::parse(b);
                if r.architectures.len() > 1 || same != Some(r.architectures[0]) {
                    rep.err(
                        vec![key("base"), key("mmdebstrap"), key("architecture")],
                        format!(
                            "the base's architecture `{b}` contradicts `architectures`; remove it (each architecture listed is bootstrapped)"
                        ),
                    );
                }
            }
        }
        Base::Ami(_) if r.architectures.len() > 1 => rep.err(
            at(1),
            "an AMI base has one architecture: bake the other from a base of its own",
        ),
        _ => {}
    }
    let arm = r.architectures.contains(&Architecture::Arm64)
        || matches!(&r.base, Base::Mmdebstrap(m) if m.architecture.as_deref() == Some("arm64"));
    if arm && r.disk.boot.contains(&BootMode::Bios) {
        rep.err(
            vec![key("disk"), key("boot")],
            "arm64 images boot with UEFI only; remove `bios` (or bake arm64 from a recipe of its own)",
        );
    }
}

fn mmdebstrap(rep: &mut Report, m: &MmdebstrapBase, allow_out: bool) {
    let at = |k: &str| vec![key("base"), key("mmdebstrap"), key(k)];
    check_suite(rep, at("suite"), &m.suite);
    if !VARIANTS.contains(&m.variant.as_str()) {
        rep.err(
            at("variant"),
            unknown("mmdebstrap variant", &m.variant, VARIANTS.iter().copied()),
        );
    }
    let Some(arch) = &m.architecture else {
        return mmdebstrap_lists(rep, m, allow_out);
    };
    if let Err(e) = no_control("an architecture", arch) {
        rep.err(at("architecture"), e);
    } else if !KNOWN_ARCHITECTURES.contains(&arch.as_str()) {
        match closest(arch, KNOWN_ARCHITECTURES.iter().copied()) {
            Some(c) => rep.err(
                at("architecture"),
                format!("unknown architecture `{arch}`, did you mean `{c}`? (expected a Debian architecture name)"),
            ),
            None => rep.warn(
                at("architecture"),
                format!("architecture `{arch}` is not a Debian architecture webake knows"),
            ),
        }
    }
    mmdebstrap_lists(rep, m, allow_out);
}

fn mmdebstrap_lists(rep: &mut Report, m: &MmdebstrapBase, allow_out: bool) {
    let at = |k: &str| vec![key("base"), key("mmdebstrap"), key(k)];
    for (i, c) in m.components.iter().enumerate() {
        let path = join(&at("components"), [Seg::Index(i)]);
        if let Err(e) = no_control("a component", c) {
            rep.err(path, e);
        } else if c.is_empty() || c.contains(char::is_whitespace) {
            rep.err(
                path,
                format!("expected one archive component such as `main`, found {c:?}"),
            );
        }
    }
    for (i, p) in m.include.iter().enumerate() {
        let path = join(&at("include"), [Seg::Index(i)]);
        if let Err(e) = no_control("a package name", p) {
            rep.err(path, e);
        } else if p.is_empty()
            || p.starts_with('-')
            || p.contains(|c: char| c.is_whitespace() || c == ',')
        {
            rep.err(
                path,
                format!("expected one package name (no spaces or commas), found {p:?}"),
            );
        } else if p
            .replace(crate::DEBIAN_ARCH_PLACEHOLDER, "")
            .contains(['{', '}'])
        {
            rep.err(
                path,
                format!(
                    "expected a package name, found {p:?}; the only placeholder here is `{}`",
                    crate::DEBIAN_ARCH_PLACEHOLDER
                ),
            );
        }
    }
    for (field, url) in [
        ("mirror", &m.mirror),
        ("security_mirror", &m.security_mirror),
    ] {
        if let Some(url) = url {
            mirror_url(rep, at(field), url);
        }
    }
    for (i, k) in m.keyrings.iter().enumerate() {
        let path = join(&at("keyrings"), [Seg::Index(i)]);
        if let Err(e) = no_control("a keyring path", k) {
            rep.err(path, e);
        } else if k.is_empty() {
            rep.err(path, "expected a keyring file path, found an empty string");
        } else {
            rep.check(path, check_path(&RecipePath(k.clone()), allow_out));
        }
    }
}

fn mirror_url(rep: &mut Report, at: Vec<Seg>, mirror: &str) {
    if let Err(e) = no_control("a mirror URL", mirror) {
        rep.err(at, e);
    } else if mirror.contains(char::is_whitespace) {
        rep.err(
            at,
            format!("expected one URL without spaces, found {mirror:?}"),
        );
    } else if !(mirror.starts_with("http://")
        || mirror.starts_with("https://")
        || mirror.starts_with("file://"))
    {
        rep.err(
            at,
            format!("expected an http(s):// or file:// URL, found {mirror:?}"),
        );
    }
}

fn disk(rep: &mut Report, d: &DiskSpec, raw: &dyn Fn(&[Seg]) -> Option<String>) {
    let size = || vec![key("disk"), key("size")];
    if d.boot.is_empty() {
        rep.err(
            vec![key("disk"), key("boot")],
            "expected at least one boot method: `uefi`, `bios` or both (e.g. `boot: [bios, uefi]`)",
        );
    }
    const MIN_ROOT: u64 = 256 << 20;
    let esp_ok = d.esp_size.0 >= 32 << 20 && d.esp_size.0 <= 1 << 30;
    if !esp_ok {
        rep.err(
            vec![key("disk"), key("esp_size")],
            format!(
                "expected an EFI system partition between 32MiB and 1GiB, found {}",
                d.esp_size
            ),
        );
    }
    if d.size.0 < d.esp_size.0 + MIN_ROOT + (4 << 20) {
        rep.err(
            size(),
            format!(
                "disk size {} is too small: expected room for the {} EFI partition and at least 256MiB of root filesystem",
                d.size, d.esp_size
            ),
        );
    } else if d.size.0 > 2 << 40 {
        rep.err(
            size(),
            format!("expected a disk size of at most 2TiB, found {}", d.size),
        );
    }
    if !d.size.0.is_multiple_of(1 << 20) {
        rep.err(size(), mib_hint(raw(&size()).as_deref(), d.size.0));
    }
    for (i, a) in d.kernel_cmdline.iter().enumerate() {
        if a.is_empty()
            || a.contains(|c: char| c.is_whitespace() || c.is_control() || c == '"' || c == '\'')
        {
            rep.err(
                vec![key("disk"), key("kernel_cmdline"), Seg::Index(i)],
                format!("expected one kernel argument without spaces or quotes, found {a:?}"),
            );
        }
    }
}

/// A recipe path must stay in the recipe's directory (lexically; `load` also resolves
/// symlinks) unless the recipe allows otherwise.
pub(crate) fn check_path(rp: &RecipePath, allow_out: bool) -> Result<(), String> {
    no_control("a path", rp.as_str())?;
    if rp.as_str().is_empty() {
        return Err("expected a path, found an empty string".into());
    }
    if allow_out {
        return Ok(());
    }
    if Path::new(rp.as_str()).is_absolute() {
        return Err(format!(
            "path {:?} is absolute; expected a path relative to the recipe's directory (or set allow_paths_outside_recipe_dir: true)",
            rp.as_str()
        ));
    }
    if rp.normalized().is_none() {
        return Err(format!(
            "path {:?} leaves the recipe's directory; expected a path inside it (or set allow_paths_outside_recipe_dir: true)",
            rp.as_str()
        ));
    }
    Ok(())
}

fn step(rep: &mut Report, i: usize, p: &Provisioner, allow_out: bool) {
    let base = vec![key("provisioners"), Seg::Index(i), key(p.kind())];
    let at = |k: &str| join(&base, [key(k)]);
    if let Some(n) = p.name() {
        rep.check(at("name"), no_control("a step name", n));
    }
    if let Provisioner::Shell(s) = p
        && s.inline.is_empty() == s.script.is_none()
    {
        rep.err(
            base.clone(),
            "a shell step needs exactly one of `inline` or `script`",
        );
    }
    for sp in crate::inputs::step_paths(p) {
        rep.check(sp.field_path(&base), check_path(sp.path, allow_out));
    }
    match p {
        Provisioner::Shell(s) => {
            for k in s.env.keys() {
                rep.check(join(&at("env"), [key(k)]), check_env_name(k));
            }
            for (j, k) in s.secret_env.iter().enumerate() {
                rep.check(join(&at("secret_env"), [Seg::Index(j)]), check_env_name(k));
            }
        }
        Provisioner::File(f) => file_step(rep, &base, f),
        Provisioner::AnsibleLocal(AnsibleLocalStep {
            inventory_groups, ..
        })
        | Provisioner::Ansible(AnsibleStep {
            inventory_groups, ..
        }) => {
            for (j, g) in inventory_groups.iter().enumerate() {
                rep.check(
                    join(&at("inventory_groups"), [Seg::Index(j)]),
                    check_inventory_group(g),
                );
            }
        }
    }
}

/// A file step's destination, mode and owner (its source is a recipe path).
fn file_step(rep: &mut Report, base: &[Seg], f: &FileStep) {
    let at = |k: &str| join(base, [key(k)]);
    if let Err(e) = no_control("a destination", &f.destination) {
        rep.err(at("destination"), e);
    } else if !f.destination.starts_with('/') {
        rep.err(
            at("destination"),
            format!(
                "expected an absolute path inside the image, found {:?}",
                f.destination
            ),
        );
    } else if f.destination.split('/').any(|c| c == "..") {
        rep.err(
            at("destination"),
            format!(
                "expected a destination without '..', found {:?}",
                f.destination
            ),
        );
    }
    if let Some(m) = &f.mode
        && u32::from_str_radix(m, 8)
            .map(|v| v > 0o7777)
            .unwrap_or(true)
    {
        rep.err(
            at("mode"),
            format!("expected an octal mode like \"0644\", found {m:?}"),
        );
    }
    if let Some(o) = &f.owner
        && !is_owner(o)
    {
        rep.err(
            at("owner"),
            format!("expected `user` or `user:group` as owner, found {o:?}"),
        );
    }
}

/// `user` or `user:group`, names of letters, digits, `_` and `-`.
fn is_owner(o: &str) -> bool {
    o.split(':').count() <= 2
        && o.split(':').all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_hints_say_what_to_write() {
        assert_eq!(
            mib_hint(Some("2GB"), 2_000_000_000),
            "2GB is 2000000000 bytes, not a whole number of MiB; write 2GiB or 1907MiB"
        );
        assert_eq!(
            mib_hint(Some("1000000000"), 1_000_000_000),
            "1000000000 is 1000000000 bytes, not a whole number of MiB; write 953MiB or 954MiB"
        );
    }

    #[test]
    fn control_characters_are_named() {
        assert_eq!(
            no_control("a name", "a\nb").unwrap_err(),
            "expected a name without control characters or line breaks, found U+000A at character 2"
        );
        assert!(no_control("a name", "a\u{1b}[31m").is_err());
        assert!(no_control("a name", "ünïcode ok").is_ok());
    }

    #[test]
    fn suites_typos_are_errors_and_unknown_suites_warnings() {
        let mut r = Report::default();
        check_suite(&mut r, vec![], "bookwrom");
        check_suite(&mut r, vec![], "bookworm-backports");
        check_suite(&mut r, vec![], "noble");
        check_suite(&mut r, vec![], "frobnicator");
        check_suite(&mut r, vec![], "bokworm-security");
        let errs: Vec<&str> = r.errors.iter().map(|(_, m)| m.as_str()).collect();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].contains("did you mean `bookworm`?"), "{errs:?}");
        assert!(
            errs[1].contains("did you mean `bookworm-security`?"),
            "{errs:?}"
        );
        assert_eq!(r.warnings.len(), 1);
        assert!(r.warnings[0].1.contains("frobnicator"));
    }
}
