//! Real bakes, inspected without booting: the core of issue 2, and the trust properties of
//! issue 10 (failures and kills leave nothing behind; hostile trees are contained).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Tests that kill webake and then look for orphaned sandbox helpers host-wide take turns:
/// a helper of the other one's killed bake, still being torn down, would count as theirs.
static KILLS: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn bake_example_and_inspect_without_booting() {
    require_bake_capabilities();
    let env = Env::new();
    let out = env.run(&["bake", "recipes/debian-minimal.yaml", "--json"]);
    assert!(out.status.success(), "bake failed: {}", text(&out));
    let res: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let image = &res["image"];
    let id = image["id"].as_str().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_progress_lines(&stderr);
    assert_cached_bases_untouched(&env, &stderr);

    let raw = assert_artifacts(image);
    let raw = Path::new(&raw);
    assert_partition_table_and_esp(raw);
    assert_root_filesystem(raw);
    assert_extracted_root(raw);
    assert_catalog_sboms_and_scratch(&env, id, image, raw);
    assert_nothing_older_than_upstream(&env, id, raw);
    assert_unchanged_bake_is_a_no_op_and_force_reuses_layers(&env, id);
}

/// Issue 17: the example lists the suite, -updates and -security in its own apt sources, and
/// none of its packages is older than the candidates those suites offer now (whatever the
/// cache held). Network: the Debian mirror the bake used.
fn assert_nothing_older_than_upstream(env: &Env, id: &str, raw: &Path) {
    let list = cat_in_image(raw, "/etc/apt/sources.list").expect("/etc/apt/sources.list");
    let sources: Vec<webake_upstream::AptSource> = list
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("deb")).then_some(())?;
            let (uri, suite) = (w.next()?, w.next()?);
            let mut s = webake_upstream::AptSource::new(uri, suite);
            s.components = w.map(String::from).collect();
            Some(s)
        })
        .collect();
    let suites: Vec<&str> = sources.iter().map(|s| s.suite.as_str()).collect();
    assert_eq!(
        suites,
        ["bookworm", "bookworm-updates", "bookworm-security"],
        "{list}"
    );
    let o = env.run(&["images", "show", id, "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let packages: Vec<webake_inventory::Package> =
        serde_json::from_value(v["inventory"]["packages"].clone()).expect("inventory packages");
    assert!(packages.len() > 100, "{} packages", packages.len());
    let client = webake_upstream::Client::new(Default::default());
    let state = client
        .check(&sources)
        .expect("check the example's sources upstream");
    let older = client
        .candidates(&packages, &state)
        .expect("candidates of the example's packages");
    assert!(
        older.is_empty(),
        "the example ships packages older than upstream offers: {older:?}"
    );
}

fn assert_progress_lines(stderr: &str) {
    for step in [
        "==> bootstrap",
        "==> 1. message of the day (file)",
        "==> 2. network and apt hygiene (shell)",
        "==> finalize",
        "==> assemble",
        "<== assemble: done in",
    ] {
        assert!(
            stderr.contains(step),
            "progress line {step:?} missing:\n{stderr}"
        );
    }
}

/// The exported tree is hard links into the cache; finalize and assemble replaced files
/// in it (fstab, grub.cfg, host keys removed) without ever touching the cached inodes.
fn assert_cached_bases_untouched(env: &Env, stderr: &str) {
    assert!(
        stderr.contains("hard-linked from the layers"),
        "export did not use hard links:\n{stderr}"
    );
    let (mut bases, mut used_with_sshd) = (0, 0);
    for e in std::fs::read_dir(env.cache.join("bootstrap"))
        .unwrap()
        .flatten()
    {
        let root = e.path().join("rootfs");
        let meta = std::fs::read_to_string(e.path().join("meta.json")).unwrap_or_default();
        // A base extracted from a catalog image (`base: {image: ...}`, tests/derived.rs) is a
        // baked image: its fstab and grub.cfg are its parent's.
        if meta.is_empty() || !root.is_dir() || meta.contains("\"image\":") {
            continue;
        }
        bases += 1;
        let fstab = std::fs::read_to_string(root.join("etc/fstab")).unwrap_or_default();
        assert!(
            !fstab.contains("UUID="),
            "a bake wrote its fstab into the cached base {}: {fstab}",
            root.display()
        );
        assert!(
            !root.join("boot/grub/grub.cfg").exists(),
            "a bake wrote grub.cfg into the cached base {}",
            root.display()
        );
        // The bases this bake used (the shared cache may hold older ones).
        let used = e
            .file_name()
            .to_str()
            .is_some_and(|k| k.len() >= 12 && stderr.contains(&k[..12]));
        if root.join("usr/sbin/sshd").exists() {
            assert!(
                std::fs::read_dir(root.join("etc/ssh"))
                    .unwrap()
                    .flatten()
                    .any(|k| k.file_name().to_string_lossy().starts_with("ssh_host_")),
                "finalize removed the SSH host keys from the cached base {}, not only from the image",
                root.display()
            );
            // openssh-server's postinst made the quick keys; the RSA one it skipped
            // (bootstrap::SKIP_RSA_HOST_KEY), and the placeholder that made it skip is gone.
            used_with_sshd += usize::from(used);
            assert!(
                !used
                    || root.join("etc/ssh/ssh_host_ed25519_key").is_file()
                        && !root.join("etc/ssh/ssh_host_rsa_key").exists(),
                "the cached base {} should have an Ed25519 host key and no RSA one",
                root.display()
            );
        }
    }
    assert!(bases > 0, "no cached base found");
    assert!(
        used_with_sshd > 0,
        "the bake's base (with sshd) not found in the cache:\n{stderr}"
    );
}

/// Artifacts: both formats, digests match the files, the qcow2 checks. Returns the raw path.
fn assert_artifacts(image: &serde_json::Value) -> String {
    let arts = image["artifacts"].as_array().unwrap();
    assert_eq!(arts.len(), 2);
    let raw = arts.iter().find(|a| a["format"] == "raw").unwrap()["path"]
        .as_str()
        .unwrap()
        .to_string();
    for a in arts {
        let p = Path::new(a["path"].as_str().unwrap());
        assert!(p.is_file(), "{} missing", p.display());
        assert_eq!(
            sha256sum(p),
            a["sha256"].as_str().unwrap(),
            "digest of {}",
            p.display()
        );
        assert_eq!(
            std::fs::metadata(p).unwrap().len(),
            a["size"].as_u64().unwrap()
        );
    }
    let qcow = arts.iter().find(|a| a["format"] == "qcow2").unwrap()["path"]
        .as_str()
        .unwrap()
        .to_string();
    let check = Command::new("qemu-img")
        .args(["check", &qcow])
        .output()
        .unwrap();
    assert!(check.status.success(), "qemu-img check: {}", text(&check));
    raw
}

/// Partition table: GPT, ESP then the x86-64 root, 1 MiB aligned; the ESP holds the UEFI
/// loader (mtools reads the FAT at its offset).
fn assert_partition_table_and_esp(raw: &Path) {
    let pt = partitions(raw);
    assert_eq!(pt["partitiontable"]["label"], "gpt");
    let parts = pt["partitiontable"]["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 2);
    assert!(
        parts[0]["type"]
            .as_str()
            .unwrap()
            .eq_ignore_ascii_case("C12A7328-F81F-11D2-BA4B-00A0C93EC93B")
    );
    assert!(
        parts[1]["type"]
            .as_str()
            .unwrap()
            .eq_ignore_ascii_case("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709")
    );
    assert_eq!(parts[0]["start"].as_u64().unwrap() % 2048, 0);

    let esp_off = parts[0]["start"].as_u64().unwrap() * 512;
    let dir = Command::new("mdir")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args([
            "-i",
            &format!("{}@@{esp_off}", raw.display()),
            "::/EFI/BOOT",
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&dir.stdout).contains("BOOTX64"),
        "ESP lacks BOOTX64.EFI: {}",
        text(&dir)
    );
}

/// The root filesystem: clean, provisioner output, environment-agnostic.
fn assert_root_filesystem(raw: &Path) {
    let fsck = Command::new("e2fsck")
        .args(["-fn"])
        .arg(format!("{}?offset={}", raw.display(), root_offset(raw)))
        .output()
        .unwrap();
    assert!(fsck.status.success(), "e2fsck: {}", text(&fsck));
    assert_eq!(
        cat_in_image(raw, "/etc/motd").as_deref(),
        Some("Debian 12 image baked by webake.\n")
    );
    assert_eq!(
        cat_in_image(raw, "/etc/webake-release").as_deref(),
        Some("baked by webake\n")
    );
    assert_eq!(
        cat_in_image(raw, "/etc/machine-id").as_deref(),
        Some(""),
        "machine-id must be empty"
    );
    assert_eq!(
        cat_in_image(raw, "/etc/hostname"),
        None,
        "no baked hostname"
    );
    assert!(
        cat_in_image(raw, "/etc/resolv.conf")
            .unwrap_or_default()
            .trim()
            .is_empty(),
        "builder resolv.conf left in the image"
    );
}

/// The extracted root: no host keys but their generator, a kernel, grub.cfg and an
/// initramfs, no build-time leftovers, the root in fstab.
fn assert_extracted_root(raw: &Path) {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let root = extract_root(raw, tmp.path());
    let ssh: Vec<String> = std::fs::read_dir(root.join("etc/ssh"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !ssh.iter().any(|n| n.starts_with("ssh_host_")),
        "SSH host keys baked in: {ssh:?}"
    );
    assert!(
        root.join("etc/systemd/system/multi-user.target.wants/webake-ssh-keygen.service")
            .symlink_metadata()
            .is_ok(),
        "host keys would never be generated"
    );
    let boot_has = |prefix: &str| {
        std::fs::read_dir(root.join("boot"))
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(prefix))
    };
    assert!(boot_has("vmlinuz-"), "no kernel");
    assert!(root.join("boot/grub/grub.cfg").is_file());
    let lists: Vec<_> = std::fs::read_dir(root.join("var/lib/apt/lists"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_file() && e.file_name() != "lock")
        .collect();
    assert!(lists.is_empty(), "apt lists left in the image");
    assert!(
        !root.join("usr/sbin/policy-rc.d").exists(),
        "policy-rc.d left in the image"
    );
    assert!(
        !root.join("etc/dpkg/dpkg.cfg.d/webake-unsafe-io").exists(),
        "the build-time dpkg force-unsafe-io drop-in was left in the image"
    );
    assert!(
        !root
            .join("etc/apt/apt.conf.d/00webake-no-translations")
            .exists(),
        "the build-time apt drop-in was left in the image"
    );
    // Built once by the bootstrap's customize hook (INITRD=No during package installs).
    assert!(boot_has("initrd.img-"), "no initramfs in /boot");
    let fstab = std::fs::read_to_string(root.join("etc/fstab")).unwrap();
    assert!(fstab.contains("\t/\text4"), "{fstab}");
}

/// Catalog: show (text and JSON) agrees with the bake output; SBOMs next to the artifacts;
/// no scratch left.
fn assert_catalog_sboms_and_scratch(env: &Env, id: &str, image: &serde_json::Value, raw: &Path) {
    let show = env.run(&["images", "show", id, "--json"]);
    assert!(show.status.success(), "{}", text(&show));
    let shown: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(shown["artifacts"], image["artifacts"]);
    assert!(
        shown["inventory"]["packages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "systemd")
    );
    let show_text = env.run(&["images", "show", id]);
    assert!(String::from_utf8_lossy(&show_text.stdout).contains(id));
    assert_eq!(env.images_json().as_array().unwrap().len(), 1);
    // SBOMs next to the artifacts.
    let art_dir = raw.parent().unwrap();
    let names: Vec<String> = std::fs::read_dir(art_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().any(|n| n.ends_with(".spdx.json"))
            && names.iter().any(|n| n.ends_with(".cdx.json")),
        "{names:?}"
    );
    assert!(
        env.scratch_entries().is_empty(),
        "scratch left behind: {:?}",
        env.scratch_entries()
    );
}

/// A second bake of unchanged inputs is a no-op: the image is up to date. --force bakes
/// again, reusing every cached layer (no bootstrap).
fn assert_unchanged_bake_is_a_no_op_and_force_reuses_layers(env: &Env, id: &str) {
    let t = Instant::now();
    let again = env.run(&["bake", "recipes/debian-minimal.yaml"]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains(&format!("image {id} is up to date")),
        "{}",
        text(&again)
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "an unchanged bake took {:?}",
        t.elapsed()
    );
    assert_eq!(env.images_json().as_array().unwrap().len(), 1);
    let forced = env.run(&["bake", "--force", "recipes/debian-minimal.yaml"]);
    assert!(forced.status.success(), "{}", text(&forced));
    let e = String::from_utf8_lossy(&forced.stderr);
    assert!(
        e.contains("<== bootstrap: done in") && e.contains("(cached)"),
        "{e}"
    );
    assert!(!e.contains("mmdebstrap"), "bootstrapped again:\n{e}");
    assert_eq!(env.images_json().as_array().unwrap().len(), 2);
}

#[test]
fn invalid_recipe_exits_2_naming_file_line_and_field() {
    let env = Env::new();
    let r = env.recipe(
        "bad",
        &format!("version: 1\nimage:\n  name: x\n{BASE}disk:\n  size: 2 parsecs\n"),
    );
    let o = env.run(&["validate", r.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("{}:16:", r.display()))
            && err.contains("disk.size")
            && err.contains("parsecs"),
        "{err}"
    );
    let ok = env.run(&["validate", "recipes/debian-minimal.yaml"]);
    assert!(ok.status.success(), "{}", text(&ok));
}

fn failing_recipe(env: &Env) -> std::path::PathBuf {
    env.recipe(
        "failing",
        &format!("version: 1\nimage:\n  name: failing\n{BASE}provisioners:\n  - shell:\n      name: will fail\n      inline:\n        - echo about to fail\n        - exit 7\n"),
    )
}

#[test]
fn failing_provisioner_leaves_nothing_behind() {
    require_bake_capabilities();
    let env = Env::new();
    let r = failing_recipe(&env);
    let (m0, l0) = (mounts(), loop_devices());
    let o = env.run(&["bake", r.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("step 1. will fail (shell)"),
        "the failing step is not named:\n{err}"
    );
    assert!(
        err.contains("exited with status 7") && err.contains("| about to fail"),
        "no status or output tail:\n{err}"
    );
    assert_eq!(mounts(), m0, "mounts leaked");
    assert_eq!(loop_devices(), l0, "loop devices leaked");
    assert!(
        processes_mentioning(env.path().to_str().unwrap()).is_empty(),
        "processes left: {:?}",
        processes_mentioning(env.path().to_str().unwrap())
    );
    assert_eq!(
        env.images_json(),
        serde_json::json!([]),
        "a failed bake recorded an image"
    );
    let bakes = env.run(&["images", "bakes", "--json"]);
    let bakes: serde_json::Value = serde_json::from_slice(&bakes.stdout).unwrap();
    assert_eq!(bakes[0]["status"], "failed");
    assert!(bakes[0]["error"].as_str().unwrap().contains("will fail"));
    assert!(
        Path::new(bakes[0]["log_path"].as_str().unwrap()).is_file(),
        "the failed bake keeps its log"
    );
    assert!(
        env.scratch_entries().is_empty(),
        "scratch left: {:?}",
        env.scratch_entries()
    );
    assert!(
        std::fs::read_dir(env.data.join("images"))
            .map(|mut d| d.next().is_none())
            .unwrap_or(true),
        "partial artifacts left"
    );
}

#[test]
fn sigkill_at_every_step_boundary_leaves_no_mounts_and_a_consistent_catalog() {
    let _turn = KILLS.lock().unwrap_or_else(|e| e.into_inner());
    require_bake_capabilities();
    let env = Env::new();
    // Steps that take a moment, so a kill lands inside each of them too.
    let r = env.recipe(
        "killme",
        &format!(
            "version: 1\nimage:\n  name: killme\n{BASE}provisioners:\n  - shell:\n      name: one\n      inline: [\"sleep 2\", \"echo one > /etc/one\"]\n  - shell:\n      name: two\n      inline: [\"sleep 2; echo two > /etc/two\"]\ntest: {{timeout_secs: 10}}\n"
        ),
    );
    let (m0, l0) = (mounts(), loop_devices());
    // Kill when a step starts (the boundary), and a moment into it.
    let points: &[(&str, u64)] = &[
        ("==> 1. one", 0),
        ("==> 1. one", 1200),
        ("==> 2. two", 0),
        ("==> 2. two", 800),
        ("==> export", 0),
        ("==> assemble", 0),
        ("==> assemble", 1500),
    ];
    for (marker, delay_ms) in points {
        let mut child = env
            .cmd()
            .args(["bake", "--no-cache", r.to_str().unwrap()])
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let marker_s = marker.to_string();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if line.starts_with(&marker_s) {
                    let _ = tx.send(());
                }
            }
        });
        let seen = rx.recv_timeout(Duration::from_secs(300)).is_ok();
        std::thread::sleep(Duration::from_millis(*delay_ms));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        assert!(seen, "never reached {marker}");
        // The kernel tears down the sandbox (parent-death signal, PID and mount namespaces),
        // asynchronously: a helper may still be exiting right after the kill.
        let deadline = Instant::now() + Duration::from_secs(10);
        while (!processes_mentioning(env.path().to_str().unwrap()).is_empty()
            || !orphaned_sandbox_helpers().is_empty())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            processes_mentioning(env.path().to_str().unwrap()).is_empty(),
            "after kill at {marker}+{delay_ms}ms: processes left: {:?}",
            processes_mentioning(env.path().to_str().unwrap())
        );
        assert!(
            orphaned_sandbox_helpers().is_empty(),
            "after kill at {marker}+{delay_ms}ms: sandbox helpers left: {:?}",
            orphaned_sandbox_helpers()
        );
        assert_eq!(
            mounts(),
            m0,
            "after kill at {marker}+{delay_ms}ms: mounts leaked"
        );
        assert_eq!(
            loop_devices(),
            l0,
            "after kill at {marker}+{delay_ms}ms: loop devices leaked"
        );
        // Catalog consistent: no image (artifacts never complete), the bake is reaped by clean.
        assert_eq!(
            env.images_json(),
            serde_json::json!([]),
            "after kill at {marker}: an image was recorded"
        );
        let clean = env.run(&["clean"]);
        assert!(clean.status.success(), "{}", text(&clean));
        let c = String::from_utf8_lossy(&clean.stdout);
        assert!(
            c.contains("stale bake record"),
            "clean did not reap the killed bake: {c}"
        );
        assert!(
            env.scratch_entries().is_empty(),
            "clean left scratch: {:?}",
            env.scratch_entries()
        );
        assert!(
            std::fs::read_dir(env.data.join("images"))
                .map(|mut d| d.next().is_none())
                .unwrap_or(true),
            "partial artifacts left after clean"
        );
    }
    // And a following bake succeeds.
    let o = env.run(&["bake", r.to_str().unwrap()]);
    assert!(o.status.success(), "bake after kills: {}", text(&o));
    assert_eq!(env.images_json().as_array().unwrap().len(), 1);
}

#[test]
fn three_concurrent_bakes_of_different_recipes() {
    require_bake_capabilities();
    let env = Env::new();
    let recipes: Vec<_> = (0..3)
        .map(|i| env.recipe(&format!("c{i}"), &format!("version: 1\nimage:\n  name: concurrent-{i}\n{BASE}provisioners:\n  - shell:\n      inline: [\"echo {i} > /etc/which\", \"sleep 1\"]\n")))
        .collect();
    let children: Vec<_> = recipes
        .iter()
        .map(|r| {
            env.cmd()
                .args(["bake", r.to_str().unwrap()])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // Wait for all of them before asserting: a bake still running after a failed assertion
    // would write into the test's directory while it is being removed.
    let outputs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    for o in &outputs {
        assert!(o.status.success(), "concurrent bake failed: {}", text(o));
    }
    let imgs = env.images_json();
    let imgs = imgs.as_array().unwrap();
    assert_eq!(imgs.len(), 3);
    for i in 0..3 {
        let img = imgs
            .iter()
            .find(|m| m["name"] == format!("concurrent-{i}"))
            .unwrap();
        let raw = artifact_path(img, "raw");
        assert_eq!(
            cat_in_image(Path::new(&raw), "/etc/which").as_deref(),
            Some(format!("{i}\n").as_str())
        );
    }
}

#[test]
fn hostile_symlinks_in_the_image_never_reach_the_host() {
    require_bake_capabilities();
    let env = Env::new();
    // The canaries' paths must also be creatable in the image: a step's /tmp is a tmpfs, so
    // when the checkout (and the test's directory) is under /tmp, they go to /var/tmp (which
    // the hygiene lint flags as a staging directory left in the image: allowed here).
    let canaries = tempfile::Builder::new()
        .prefix("webake-canary-")
        .tempdir_in(if env.path().starts_with("/tmp") {
            Path::new("/var/tmp")
        } else {
            env.path()
        })
        .unwrap();
    let victim_dir = canaries.path().join("victim");
    std::fs::create_dir(&victim_dir).unwrap();
    let victim_file = canaries.path().join("victim-file");
    std::fs::write(&victim_file, "host data\n").unwrap();
    std::fs::create_dir(env.path().join("files")).unwrap();
    std::fs::write(env.path().join("files/pwned"), "pwned\n").unwrap();
    let r = env.recipe(
        "hostile",
        &format!(
            "version: 1\nimage:\n  name: hostile\n{BASE}lint:\n  allow: [staging-dir]\nprovisioners:\n  - shell:\n      inline:\n        - mkdir -p {vd}\n        - ln -s {vd} /opt/escape\n        - ln -sf {vf} /etc/machine-id\n        - ln -sf {vf} /etc/hostname\n  - file:\n      source: files/pwned\n      destination: /opt/escape/pwned\n",
            vd = victim_dir.display(),
            vf = victim_file.display()
        ),
    );
    let o = env.run(&["bake", r.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        std::fs::read_dir(&victim_dir).unwrap().next().is_none(),
        "a file provisioner wrote on the host through a symlink"
    );
    assert_eq!(
        std::fs::read_to_string(&victim_file).unwrap(),
        "host data\n",
        "finalize wrote on the host through a symlink"
    );
    // Inside the image the write landed where the symlink points within the root.
    let imgs = env.images_json();
    let raw = artifact_path(&imgs[0], "raw");
    assert_eq!(
        cat_in_image(Path::new(&raw), &format!("{}/pwned", victim_dir.display())).as_deref(),
        Some("pwned\n")
    );
    // A recipe path climbing out of the recipe directory is refused before anything runs.
    let r2 = env.recipe("traversal", &format!("version: 1\nimage:\n  name: t\n{BASE}provisioners:\n  - file:\n      source: ../../../../etc/shadow\n      destination: /etc/x\n"));
    let o = env.run(&["bake", r2.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("leaves the recipe's directory"));
}

#[test]
fn disk_full_during_assembly_fails_clearly_and_leaves_no_partial_artifact() {
    require_bake_capabilities();
    let env = Env::new();
    let small = env.path().join("small");
    std::fs::create_dir(&small).unwrap();
    // The data dir lives on a 150 MiB tmpfs mounted in a private mount namespace of the bake
    // (it vanishes with the process: nothing to unmount afterwards).
    let shown = env.cmd();
    let mut args: Vec<String> = vec![shown.get_program().to_string_lossy().into_owned()];
    args.extend(shown.get_args().map(|a| a.to_string_lossy().into_owned()));
    let pos = args.iter().position(|a| a == "--data-dir").unwrap();
    args[pos + 1] = small.display().to_string();
    let pos = args.iter().position(|a| a == "--catalog").unwrap();
    args[pos + 1] = env.path().join("catalog.db").display().to_string();
    args.extend(["bake".into(), "recipes/debian-minimal.yaml".into()]);
    let script = format!(
        "mount -t tmpfs -o size=150m webake-test-full {} && exec \"$@\"",
        small.display()
    );
    let m0 = mounts();
    let o = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script, "sh"])
        .args(&args)
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert_eq!(mounts(), m0);
    assert!(
        !o.status.success(),
        "a bake onto a full disk succeeded?\n{}",
        text(&o)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("No space left on device") || err.contains("not enough space"),
        "unclear error:\n{err}"
    );
    assert!(
        err.contains("step assemble"),
        "the failing step is not named:\n{err}"
    );
    // Nothing partial: the tmpfs is gone, and the catalog has no image.
    let cat = Command::new(env!("CARGO_BIN_EXE_webake"))
        .args([
            "--data-dir",
            env.data.to_str().unwrap(),
            "--catalog",
            env.path().join("catalog.db").to_str().unwrap(),
            "images",
            "list",
            "--json",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&cat.stdout).trim(), "[]");
    assert!(
        env.scratch_entries().is_empty(),
        "scratch left: {:?}",
        env.scratch_entries()
    );
}

#[test]
fn first_sigint_cancels_cleanly() {
    require_bake_capabilities();
    let env = Env::new();
    let r = env.recipe("slow", &format!("version: 1\nimage:\n  name: slow\n{BASE}provisioners:\n  - shell:\n      name: slow step\n      inline: [\"sleep 60\"]\n"));
    let (m0, l0) = (mounts(), loop_devices());
    let mut child = env
        .cmd()
        .args(["bake", "--no-cache", r.to_str().unwrap()])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.starts_with("==> 1. slow step") {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    rx.recv_timeout(Duration::from_secs(300))
        .expect("the slow step never started");
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let status = child.wait().unwrap();
    let err = reader.join().unwrap();
    assert_eq!(status.code(), Some(130), "Ctrl-C did not exit 130:\n{err}");
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "cancellation took {:?}",
        t.elapsed()
    );
    // Said once, with the step it stopped in, and nothing else after it.
    let error = &err[err.find("error: ").expect(&err)..];
    assert_eq!(error.matches("cancelled").count(), 1, "{error}");
    assert!(
        error.contains("cancelled during step ") && !error.contains("caused by"),
        "{error}"
    );
    assert_eq!(mounts(), m0, "mounts leaked");
    assert_eq!(loop_devices(), l0);
    assert!(
        processes_mentioning(env.path().to_str().unwrap()).is_empty(),
        "processes left: {:?}",
        processes_mentioning(env.path().to_str().unwrap())
    );
    assert!(
        env.scratch_entries().is_empty(),
        "scratch left: {:?}",
        env.scratch_entries()
    );
    let bakes = env.run(&["images", "bakes", "--json"]);
    let bakes: serde_json::Value = serde_json::from_slice(&bakes.stdout).unwrap();
    assert_eq!(bakes[0]["status"], "cancelled");
    assert_eq!(env.images_json(), serde_json::json!([]));
}

/// Liveness is a lease in the cache, not a row in one catalog: `webake clean` against another
/// catalog that shares the cache leaves a running bake's scratch and staging alone.
#[test]
fn clean_of_another_catalog_never_touches_a_running_bake() {
    require_bake_capabilities();
    let env = Env::new();
    let r = env.recipe(
        "slow",
        &format!(
            "version: 1\nimage:\n  name: slow\n{BASE}provisioners:\n  - shell:\n      inline:\n        - sleep 12\n        - echo {}\n",
            std::process::id()
        ),
    );
    let bake = env
        .cmd()
        .args(["bake", "--no-cache", r.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the step runs (its scratch dir exists).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while env.scratch_entries().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the bake never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    std::thread::sleep(std::time::Duration::from_secs(2));
    let scratch_before = env.scratch_entries();
    let other_catalog = env.path().join("other.db");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_webake"))
        .arg("--data-dir")
        .arg(env.path().join("other-data"))
        .arg("--cache-dir")
        .arg(&env.cache)
        .arg("--catalog")
        .arg(&other_catalog)
        .arg("clean")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        env.scratch_entries(),
        scratch_before,
        "clean of another catalog removed a running bake's scratch: {}",
        text(&o)
    );
    let out = bake.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the bake did not survive: {}",
        text(&out)
    );
    // Once the bake is gone, its lease is too.
    let leases: Vec<_> = std::fs::read_dir(env.cache.join("leases"))
        .map(|rd| rd.flatten().collect())
        .unwrap_or_default();
    assert!(leases.is_empty(), "a lease outlived its bake: {leases:?}");
}

/// The base's initramfs is built beside the steps (crate::initramfs); the steps see an empty
/// placeholder. A step that changes the initramfs configuration and runs `update-initramfs -u`
/// (what a package with an initramfs hook triggers) must still rebuild it, and its initramfs,
/// not the base's, must be the one in the image.
#[test]
fn a_step_that_rebuilds_the_initramfs_wins_over_the_base_s() {
    require_bake_capabilities();
    let env = Env::new();
    let r = env.recipe(
        "initrd-hook",
        &format!(
            "version: 1\nimage:\n  name: initrd-hook\n{BASE}provisioners:\n  - shell:\n      name: initramfs hook\n      inline:\n        - printf '#!/bin/sh\\n[ \"$1\" = prereqs ] \\&\\& exit 0\\necho webake > \"$DESTDIR/webake-marker\"\\n' > /etc/initramfs-tools/hooks/webake-marker\n        - chmod +x /etc/initramfs-tools/hooks/webake-marker\n        - update-initramfs -u\n        - sha256sum /boot/initrd.img-* > /etc/webake-initrd.sha256\n"
        ),
    );
    let o = env.run(&["bake", r.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let res: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let raw = artifact_path(&res["image"], "raw");
    let raw = Path::new(&raw);
    let recorded = cat_in_image(raw, "/etc/webake-initrd.sha256").expect("the step's record");
    let (sum, path) = recorded.trim().split_once("  ").expect("sha256sum output");
    assert_ne!(
        sum, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "update-initramfs -u in the step did not rebuild the placeholder: {recorded}"
    );
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let out = tmp.path().join("initrd");
    let d = dump_from_image(raw, path, &out);
    assert!(d.status.success() && out.is_file(), "{}", text(&d));
    assert_eq!(
        sha256sum(&out),
        sum,
        "the image's {path} is not the one the step built (the base's background build won?)"
    );
}

/// A bake that fails (or is killed) while the base's initramfs is still being built beside
/// its steps leaves no half-built base: failed, the job is stopped and the entry removed;
/// killed, the incomplete entry (no meta.json) is never used and `webake clean` removes it
/// (or, when the initramfs won the race with the kill, the entry is whole).
/// Bootstraps its own base twice (a private bootstrap cache).
#[test]
fn a_failed_or_killed_bake_never_leaves_a_half_built_base() {
    let _turn = KILLS.lock().unwrap_or_else(|e| e.into_inner());
    require_bake_capabilities();
    let env = Env::isolated(&["bootstrap"]);
    let bootstrap = env.cache.join("bootstrap");
    let (m0, l0) = (mounts(), loop_devices());
    let entries = || -> Vec<(String, bool)> {
        let mut v: Vec<(String, bool)> = std::fs::read_dir(&bootstrap)
            .unwrap()
            .flatten()
            .map(|e| {
                let complete = e.path().join("meta.json").is_file();
                (e.file_name().to_string_lossy().into_owned(), complete)
            })
            .collect();
        v.sort();
        v
    };
    let no_leftovers = |when: &str| {
        let left = processes_mentioning(env.path().to_str().unwrap());
        assert!(left.is_empty(), "{when}: processes left: {left:?}");
        let orphans = orphaned_sandbox_helpers();
        assert!(
            orphans.is_empty(),
            "{when}: sandbox helpers left: {orphans:?}"
        );
        assert_eq!(mounts(), m0, "{when}: mounts leaked");
        assert_eq!(loop_devices(), l0, "{when}: loop devices leaked");
    };

    // Failed: the first step fails at once, seconds before the initramfs is done.
    let r = failing_recipe(&env);
    let o = env.run(&["bake", r.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("building the initramfs of") && !err.contains("==> initramfs"),
        "the failing step did not run while the initramfs was built:\n{err}"
    );
    no_leftovers("after the failed bake");
    let left = entries();
    match left.as_slice() {
        [] => {}
        // The initramfs was done before the step failed (it overlaps the copy too).
        [(key, true)] => assert_whole(&bootstrap.join(key)),
        _ => panic!("a half-built base was left in the cache: {left:?}"),
    }
    for (key, _) in left {
        std::fs::remove_dir_all(bootstrap.join(key)).unwrap();
    }

    // Killed while the initramfs is built.
    let ok = env.recipe(
        "slow",
        &format!("version: 1\nimage:\n  name: slow\n{BASE}provisioners:\n  - shell:\n      name: slow\n      inline: [\"sleep 20\"]\n"),
    );
    let mut child = env
        .cmd()
        .args(["bake", ok.to_str().unwrap()])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let seen = {
        use std::io::BufRead;
        std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            // The tree is ready and committed; the initramfs is still being built.
            .any(|l| l.starts_with("==> 1. slow"))
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen, "the bake never reached its step");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_mentioning(env.path().to_str().unwrap()).is_empty()
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    no_leftovers("after the kill");
    let left = entries();
    assert_eq!(left.len(), 1, "expected one entry: {left:?}");
    if left[0].1 {
        // The initramfs finished before the kill (it overlaps the copy too).
        assert_whole(&bootstrap.join(&left[0].0));
        return;
    }
    let clean = env.run(&["clean"]);
    assert!(clean.status.success(), "{}", text(&clean));
    assert!(
        String::from_utf8_lossy(&clean.stdout).contains("corrupt cache entry"),
        "clean did not remove the incomplete base: {}",
        text(&clean)
    );
    assert_eq!(entries(), vec![], "clean left the incomplete base");
}

/// A complete base entry has its initramfs in its layer.
fn assert_whole(entry: &Path) {
    let boot = entry.join("initramfs/boot");
    let built = std::fs::read_dir(&boot)
        .map(|d| d.flatten().any(|e| e.metadata().is_ok_and(|m| m.len() > 0)))
        .unwrap_or(false);
    assert!(
        built,
        "a complete entry without its initramfs: {}",
        boot.display()
    );
}
