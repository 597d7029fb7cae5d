//! NVMe-by-serial resolution against a fabricated sysfs and /dev tree.

use std::path::Path;
use std::time::{Duration, Instant};

use webake_aws::{EBS_NVME_MODEL, Error, resolve_nvme_device};

const VOL_A: &str = "vol-0123456789abcdef0";
const VOL_B: &str = "vol-0fedcba9876543210";

struct Tree {
    dir: tempfile::TempDir,
}

impl Tree {
    fn new() -> Self {
        let t = Tree {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir_all(t.sys().join("class/nvme")).unwrap();
        std::fs::create_dir_all(t.dev().join("disk/by-id")).unwrap();
        t
    }
    fn sys(&self) -> std::path::PathBuf {
        self.dir.path().join("sys")
    }
    fn dev(&self) -> std::path::PathBuf {
        self.dir.path().join("dev")
    }
    /// A controller `nvme{n}` with the given serial/model and namespace `nvme{n}n1`.
    fn controller(&self, n: u32, serial: &str, model: &str) {
        let c = self.sys().join(format!("class/nvme/nvme{n}"));
        std::fs::create_dir_all(c.join(format!("nvme{n}n1"))).unwrap();
        // sysfs pads these fields with spaces
        std::fs::write(c.join("serial"), format!("{serial:<20}\n")).unwrap();
        std::fs::write(c.join("model"), format!("{model:<40}\n")).unwrap();
    }
    fn node(&self, n: u32) {
        std::fs::write(self.dev().join(format!("nvme{n}n1")), b"").unwrap();
    }
    fn by_id(&self, serial: &str, target: &str) {
        std::os::unix::fs::symlink(
            format!("../../{target}"),
            self.dev().join(format!(
                "disk/by-id/nvme-Amazon_Elastic_Block_Store_{serial}"
            )),
        )
        .unwrap();
    }
    fn resolve(&self, vol: &str, timeout: Duration) -> webake_aws::Result<std::path::PathBuf> {
        resolve_nvme_device(vol, &self.sys(), &self.dev(), timeout)
    }
}

#[test]
fn two_volumes_each_resolve_to_their_own_device() {
    let t = Tree::new();
    // nvme0 is the root volume of another id; an instance-store disk carries a look-alike serial
    t.controller(0, "vol0aaaaaaaaaaaaaaaa", EBS_NVME_MODEL);
    t.controller(1, "vol0fedcba9876543210", EBS_NVME_MODEL);
    t.controller(2, "vol0123456789abcdef0", EBS_NVME_MODEL);
    t.controller(
        3,
        "vol0123456789abcdef0",
        "Amazon EC2 NVMe Instance Storage",
    );
    for n in 0..4 {
        t.node(n);
    }
    t.by_id("vol0fedcba9876543210", "nvme1n1");
    t.by_id("vol0123456789abcdef0", "nvme2n1");
    assert_eq!(
        t.resolve(VOL_A, Duration::from_secs(1)).unwrap(),
        t.dev().join("nvme2n1")
    );
    assert_eq!(
        t.resolve(VOL_B, Duration::from_secs(1)).unwrap(),
        t.dev().join("nvme1n1")
    );
}

#[test]
fn works_without_udev_links() {
    let t = Tree::new();
    t.controller(4, "vol0123456789abcdef0", EBS_NVME_MODEL);
    t.node(4);
    assert_eq!(
        t.resolve(VOL_A, Duration::from_secs(1)).unwrap(),
        t.dev().join("nvme4n1")
    );
}

#[test]
fn waits_for_a_device_that_appears_late() {
    let t = Tree::new();
    t.controller(0, "vol0aaaaaaaaaaaaaaaa", EBS_NVME_MODEL);
    t.node(0);
    let sys = t.sys();
    let dev = t.dev();
    let attach = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(400));
        // controller first, device node a little later, as the kernel does
        let c = sys.join("class/nvme/nvme1");
        std::fs::create_dir_all(c.join("nvme1n1")).unwrap();
        std::fs::write(c.join("model"), format!("{EBS_NVME_MODEL}\n")).unwrap();
        std::fs::write(c.join("serial"), "vol0123456789abcdef0\n").unwrap();
        std::thread::sleep(Duration::from_millis(200));
        std::fs::write(dev.join("nvme1n1"), b"").unwrap();
    });
    let start = Instant::now();
    let got = t.resolve(VOL_A, Duration::from_secs(10)).unwrap();
    attach.join().unwrap();
    assert_eq!(got, t.dev().join("nvme1n1"));
    assert!(
        start.elapsed() >= Duration::from_millis(550),
        "returned before the node existed"
    );
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn timeout_names_the_volume() {
    let t = Tree::new();
    t.controller(0, "vol0aaaaaaaaaaaaaaaa", EBS_NVME_MODEL);
    t.node(0);
    let start = Instant::now();
    let err = t.resolve(VOL_A, Duration::from_millis(300)).unwrap_err();
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert!(matches!(err, Error::NvmeTimeout { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(VOL_A), "{msg}");
    assert!(msg.contains("vol0123456789abcdef0"), "{msg}");

    // controller present, node missing: the message says which node
    t.controller(1, "vol0123456789abcdef0", EBS_NVME_MODEL);
    let msg = t
        .resolve(VOL_A, Duration::from_millis(100))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("nvme1n1") && msg.contains(VOL_A), "{msg}");
}

#[test]
fn by_id_link_that_disagrees_is_an_error() {
    let t = Tree::new();
    t.controller(1, "vol0123456789abcdef0", EBS_NVME_MODEL);
    t.controller(2, "vol0fedcba9876543210", EBS_NVME_MODEL);
    t.node(1);
    t.node(2);
    t.by_id("vol0123456789abcdef0", "nvme2n1");
    let err = t.resolve(VOL_A, Duration::from_secs(1)).unwrap_err();
    assert!(matches!(err, Error::NvmeMismatch { .. }), "{err}");
}

#[test]
fn missing_sysfs_class_is_waited_for_then_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let err = resolve_nvme_device(
        VOL_B,
        &dir.path().join("sys"),
        Path::new("/nonexistent"),
        Duration::from_millis(100),
    )
    .unwrap_err();
    assert!(err.to_string().contains(VOL_B));
}

#[test]
fn rejects_what_is_not_a_volume_id() {
    let t = Tree::new();
    assert!(matches!(
        t.resolve("/dev/xvdf", Duration::from_millis(10)),
        Err(Error::Invalid(_))
    ));
}
