//! The publish flow against a real moto server (started by each test on loopback), with a
//! recording / fault-injecting proxy in front. Needs `pip install 'moto[server]'`
//! (crates/webake-aws/requirements-test.txt); fails, never skips, without it.

mod common;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::Ordering;

use aws_sdk_ec2::types::Filter;
use base64::Engine as _;
use common::{
    COPY, Canned, Counting, Env, HOME, Moto, ORG, Proxy, SHARE_ACCOUNT, env, make_disk, request,
};
use sha2::{Digest as _, Sha256};
use webake_aws::{
    EBS_BLOCK_SIZE, Error, NoReporter, Publication, PublishRequest, RegionClients, RegionImage,
    Reporter, Session, TAG_BAKE_ID, TAG_INPUTS_DIGEST, TAG_RUN,
};

fn bake_filter(bake_id: &str) -> Filter {
    Filter::builder()
        .name(format!("tag:{TAG_BAKE_ID}"))
        .values(bake_id)
        .build()
}

async fn tagged(clients: &RegionClients, bake_id: &str) -> (Vec<String>, Vec<String>) {
    let images = clients
        .ec2
        .describe_images()
        .owners("self")
        .filters(bake_filter(bake_id))
        .send()
        .await
        .unwrap();
    let snaps = clients
        .ec2
        .describe_snapshots()
        .owner_ids("self")
        .filters(bake_filter(bake_id))
        .send()
        .await
        .unwrap();
    (
        images
            .images()
            .iter()
            .filter_map(|i| i.image_id())
            .map(str::to_string)
            .collect(),
        snaps
            .snapshots()
            .iter()
            .filter_map(|s| s.snapshot_id())
            .map(str::to_string)
            .collect(),
    )
}

fn b64_sha256(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(data))
}

/// The first publish: two regions, zero blocks skipped and reported, bounded concurrency.
async fn first_publish(env: &Env, req: &PublishRequest) -> Publication {
    let reporter = Counting::default();
    let publication = webake_aws::publish(&env.session, req, &reporter)
        .await
        .unwrap();
    assert_eq!(publication.regions.len(), 2, "{publication:?}");
    // 6 full blocks + a non-zero 100 KiB tail = 7 blocks; 1 and 4 are zero: skipped, reported
    assert_eq!(reporter.sent.load(Ordering::SeqCst), 5);
    assert_eq!(reporter.skipped.load(Ordering::SeqCst), 2);
    assert!(
        reporter
            .steps
            .lock()
            .unwrap()
            .iter()
            .any(|s| s.contains("registering"))
    );
    let max = env.proxy.max_in_flight("PutSnapshotBlock");
    assert!(
        (1..=4).contains(&max),
        "at most `concurrency` (4) blocks in flight, saw {max}"
    );
    let home = &publication.regions[HOME];
    let copy = &publication.regions[COPY];
    assert!(home.ami_id.starts_with("ami-") && home.snapshot_id.starts_with("snap-"));
    assert!(copy.ami_id.starts_with("ami-") && copy.ami_id != home.ami_id);
    assert!(!home.reused && !copy.reused);
    publication
}

/// The RegisterImage request webake sent (moto drops most of its fields); returns its form.
fn assert_register_image_sent(env: &Env, home: &RegionImage) -> BTreeMap<String, String> {
    let register = env.proxy.ops("RegisterImage");
    assert_eq!(register.len(), 1);
    let f = register[0].form();
    let expect = [
        ("Name", "webake-test-1.0.0-x86_64"),
        ("Description", "webake test image"),
        ("Architecture", "x86_64"),
        ("VirtualizationType", "hvm"),
        ("RootDeviceName", "/dev/xvda"),
        ("BootMode", "uefi"),
        ("EnaSupport", "true"),
        ("ImdsSupport", "v2.0"),
        ("TpmSupport", "v2.0"),
        ("BlockDeviceMapping.1.DeviceName", "/dev/xvda"),
        (
            "BlockDeviceMapping.1.Ebs.SnapshotId",
            home.snapshot_id.as_str(),
        ),
        ("BlockDeviceMapping.1.Ebs.VolumeType", "gp3"),
        ("BlockDeviceMapping.1.Ebs.DeleteOnTermination", "true"),
        ("BlockDeviceMapping.1.Ebs.VolumeSize", "1"),
    ];
    for (k, v) in expect {
        assert_eq!(
            f.get(k).map(String::as_str),
            Some(v),
            "RegisterImage field {k} in {f:?}"
        );
    }
    f
}

/// The non-zero blocks of `data`, by index, each padded to a full EBS block.
fn non_zero_blocks(data: &[u8]) -> Vec<(usize, Vec<u8>)> {
    let mut expected_blocks = Vec::new();
    for (i, chunk) in data.chunks(EBS_BLOCK_SIZE).enumerate() {
        let mut block = chunk.to_vec();
        block.resize(EBS_BLOCK_SIZE, 0);
        if block.iter().any(|&b| b != 0) {
            expected_blocks.push((i, block));
        }
    }
    expected_blocks
}

/// Blocks: only non-zero ones, each with its own SHA-256; the tail padded to 512 KiB. Then
/// CompleteSnapshot with the count and the aggregate checksum, and StartSnapshot's tags.
fn assert_blocks_sent(env: &Env, expected_blocks: &[(usize, Vec<u8>)]) {
    let puts = env.proxy.ops("PutSnapshotBlock");
    assert_eq!(puts.len(), expected_blocks.len(), "zero blocks are skipped");
    let mut digests = Vec::new();
    for (i, block) in expected_blocks {
        let put = puts
            .iter()
            .find(|p| p.path.ends_with(&format!("/blocks/{i}")))
            .expect("block uploaded");
        assert_eq!(put.body.len(), EBS_BLOCK_SIZE);
        assert_eq!(&put.body, block, "block {i} body");
        assert_eq!(
            put.header("x-amz-Checksum"),
            Some(b64_sha256(block).as_str())
        );
        assert_eq!(put.header("x-amz-Checksum-Algorithm"), Some("SHA256"));
        assert_eq!(put.header("x-amz-Data-Length"), Some("524288"));
        digests.extend_from_slice(&Sha256::digest(block));
    }
    let complete = env.proxy.ops("CompleteSnapshot");
    assert_eq!(complete.len(), 1);
    let c = &complete[0];
    assert_eq!(
        c.header("x-amz-ChangedBlocksCount"),
        Some(expected_blocks.len().to_string().as_str())
    );
    assert_eq!(
        c.header("x-amz-Checksum"),
        Some(b64_sha256(&digests).as_str()),
        "aggregate checksum"
    );
    assert_eq!(c.header("x-amz-Checksum-Algorithm"), Some("SHA256"));
    assert_eq!(
        c.header("x-amz-Checksum-Aggregation-Method"),
        Some("LINEAR")
    );
    let start = env.proxy.ops("StartSnapshot");
    let start_body: serde_json::Value = serde_json::from_slice(&start[0].body).unwrap();
    assert_eq!(start_body["VolumeSize"], 1);
    assert!(
        start_body["Tags"].to_string().contains("bake-1"),
        "snapshot tagged at start: {start_body}"
    );
}

/// Tags at creation (RegisterImage form `f`, CopyImage), the copy in its own region,
/// deprecation and snapshot sharing in every region.
fn assert_tagged_copied_deprecated_shared(
    env: &Env,
    f: &BTreeMap<String, String>,
    home: &RegionImage,
) {
    assert_eq!(
        f.get("TagSpecification.1.ResourceType").map(String::as_str),
        Some("image")
    );
    assert!(
        f.values().any(|v| v == "bake-1"),
        "RegisterImage tags at creation: {f:?}"
    );

    let copies = env.proxy.ops("CopyImage");
    assert_eq!(copies.len(), 1);
    let f = copies[0].form();
    assert_eq!(f["SourceImageId"], home.ami_id);
    assert_eq!(f["SourceRegion"], HOME);
    assert_eq!(
        f.get("TagSpecification.1.ResourceType").map(String::as_str),
        Some("image")
    );
    assert!(
        copies[0]
            .header("authorization")
            .unwrap()
            .contains(&format!("/{COPY}/ec2/")),
        "copy runs in the target region"
    );

    let deprecations = env.proxy.ops("EnableImageDeprecation");
    assert_eq!(deprecations.len(), 2, "deprecation in every region");
    assert!(
        deprecations
            .iter()
            .all(|d| d.form()["DeprecateAt"].starts_with("2027-01-01T00:00:00"))
    );

    let shares = env.proxy.ops("ModifySnapshotAttribute");
    assert_eq!(shares.len(), 2, "snapshot shared in every region");
}

/// State in moto for one region: the AMI and its snapshot tagged, launch and volume
/// permissions shared.
async fn assert_region_state(
    clients: &RegionClients,
    region: &str,
    image: &RegionImage,
    run_id: &str,
) {
    let (images, snaps) = tagged(clients, "bake-1").await;
    assert_eq!(images, vec![image.ami_id.clone()], "AMI tagged in {region}");
    assert!(
        snaps.contains(&image.snapshot_id),
        "snapshot tagged in {region}: {snaps:?}"
    );
    let d = clients
        .ec2
        .describe_images()
        .image_ids(&image.ami_id)
        .send()
        .await
        .unwrap();
    let tags: BTreeMap<_, _> = d.images()[0]
        .tags()
        .iter()
        .map(|t| (t.key().unwrap().to_string(), t.value().unwrap().to_string()))
        .collect();
    assert_eq!(
        tags.get(TAG_INPUTS_DIGEST).map(String::as_str),
        Some("sha256:bake-1-inputs")
    );
    assert_eq!(tags.get("team").map(String::as_str), Some("platform"));
    assert_eq!(tags.get(TAG_RUN).map(String::as_str), Some(run_id));
    assert_launch_permissions(clients, region, image).await;
    let sp = clients
        .ec2
        .describe_snapshot_attribute()
        .snapshot_id(&image.snapshot_id)
        .attribute(aws_sdk_ec2::types::SnapshotAttributeName::CreateVolumePermission)
        .send()
        .await
        .unwrap();
    assert!(
        sp.create_volume_permissions()
            .iter()
            .any(|p| p.user_id() == Some(SHARE_ACCOUNT)),
        "{sp:?}"
    );
}

/// The AMI launches for the shared account and the organization.
async fn assert_launch_permissions(clients: &RegionClients, region: &str, image: &RegionImage) {
    let perms = clients
        .ec2
        .describe_image_attribute()
        .image_id(&image.ami_id)
        .attribute(aws_sdk_ec2::types::ImageAttributeName::LaunchPermission)
        .send()
        .await
        .unwrap();
    let users: Vec<_> = perms
        .launch_permissions()
        .iter()
        .filter_map(|p| p.user_id())
        .collect();
    assert!(
        users.contains(&SHARE_ACCOUNT),
        "launch permission in {region}: {perms:?}"
    );
    let orgs: Vec<_> = perms
        .launch_permissions()
        .iter()
        .filter_map(|p| p.organization_arn())
        .collect();
    assert!(
        orgs.contains(&ORG),
        "org launch permission in {region}: {perms:?}"
    );
}

/// Idempotent re-run: same AMIs, nothing uploaded or registered again; the same name with
/// other inputs is refused.
async fn assert_rerun_is_idempotent(env: &Env, req: &PublishRequest, publication: &Publication) {
    env.proxy.clear_log();
    let again = webake_aws::publish(&env.session, req, &NoReporter)
        .await
        .unwrap();
    assert_eq!(again.regions[HOME].ami_id, publication.regions[HOME].ami_id);
    assert_eq!(again.regions[COPY].ami_id, publication.regions[COPY].ami_id);
    assert!(again.regions.values().all(|r| r.reused));
    assert_ne!(again.run_id, publication.run_id, "every run has its own id");
    for op in [
        "StartSnapshot",
        "PutSnapshotBlock",
        "RegisterImage",
        "CopyImage",
    ] {
        assert!(env.proxy.ops(op).is_empty(), "re-run sent {op}");
    }

    // Same name, other inputs: refused, nothing created.
    let mut other = req.clone();
    other.inputs_digest = "sha256:different".into();
    let err = webake_aws::publish(&env.session, &other, &NoReporter)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NameConflict { .. }), "{err}");
}

/// Download gives back the same bytes (the volume is 1 GiB; the rest reads as zeros).
async fn assert_download_gives_back_the_disk(
    env: &Env,
    clients: &RegionClients,
    home: &RegionImage,
    data: &[u8],
    blocks: usize,
) {
    let out = env.dir.path().join("down.raw");
    let summary =
        webake_aws::download_snapshot_to_file(clients, &home.snapshot_id, &out, 4, &NoReporter)
            .await
            .unwrap();
    assert_eq!(summary.blocks_written as usize, blocks);
    let got = std::fs::read(&out).unwrap();
    assert_eq!(got.len(), 1 << 30);
    assert!(
        got[..data.len()] == data[..],
        "downloaded bytes differ from the disk"
    );
    assert!(got[data.len()..].iter().all(|&b| b == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_copy_share_tag_rerun_and_download() {
    let env = env().await;
    let disk = env.dir.path().join("disk.raw");
    let data = make_disk(&disk, 6); // 6 full blocks + a partial tail; blocks 1 and 4 are zero
    let mut req = request(&disk, "bake-1", "webake-test-1.0.0-x86_64");
    req.platform.tpm_support = true;
    req.deprecate_at = Some("2027-01-01T00:00:00Z".parse().unwrap());
    // moto has no EnableImageDeprecation: answer it here and assert the request instead.
    env.proxy.fail("EnableImageDeprecation", None, || {
        Canned::ec2_ok("EnableImageDeprecation")
    });

    let publication = first_publish(&env, &req).await;
    let home = &publication.regions[HOME];

    // -- the requests webake sent (moto drops most RegisterImage fields) --
    let register_form = assert_register_image_sent(&env, home);
    let expected_blocks = non_zero_blocks(&data);
    assert_blocks_sent(&env, &expected_blocks);
    assert_tagged_copied_deprecated_shared(&env, &register_form, home);

    // -- state in moto: tags, sharing, snapshot completed --
    for (region, image) in &publication.regions {
        let clients = env.session.region(region);
        assert_region_state(&clients, region, image, &publication.run_id).await;
    }
    let home_clients = env.session.region(HOME);
    let s = home_clients
        .ec2
        .describe_snapshots()
        .snapshot_ids(&home.snapshot_id)
        .send()
        .await
        .unwrap();
    assert_eq!(
        s.snapshots()[0].state(),
        Some(&aws_sdk_ec2::types::SnapshotState::Completed)
    );

    assert_rerun_is_idempotent(&env, &req, &publication).await;
    assert_download_gives_back_the_disk(&env, &home_clients, home, &data, expected_blocks.len())
        .await;

    // find_root_snapshot reads the root mapping of an AMI (the proxy reports the registered
    // snapshot, as AWS does; moto alone invents its own).
    let root = webake_aws::find_root_snapshot(&home_clients, &home.ami_id)
        .await
        .unwrap();
    assert_eq!(root.snapshot_id, home.snapshot_id, "{root:?}");
    env.proxy.assert_contract_kept();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_server_errors_are_retried() {
    let env = env().await;
    let disk = env.dir.path().join("disk.raw");
    make_disk(&disk, 4);
    let p = &env.proxy;
    p.fail("StartSnapshot", Some(1), || {
        Canned::ebs_error(400, "ThrottlingException")
    });
    p.fail("PutSnapshotBlock", Some(3), || Canned::plain(503));
    p.fail("CompleteSnapshot", Some(1), || {
        Canned::ebs_error(500, "InternalServerException")
    });
    p.fail("DescribeImages", Some(1), || {
        Canned::ec2_error(503, "Unavailable")
    });
    p.fail("RegisterImage", Some(2), || {
        Canned::ec2_error(400, "RequestLimitExceeded")
    });
    p.fail("CopyImage", Some(1), || {
        Canned::ec2_error(500, "InternalError")
    });
    p.fail("ModifyImageAttribute", Some(1), || {
        Canned::ec2_error(400, "Throttling")
    });

    let publication = webake_aws::publish(
        &env.session,
        &request(&disk, "bake-2", "webake-retry-1"),
        &NoReporter,
    )
    .await
    .unwrap();
    assert_eq!(publication.regions.len(), 2);
    assert!(
        p.pending_rules().is_empty(),
        "every injected fault was hit: {:?}",
        p.pending_rules()
    );
    let registers = p.ops("RegisterImage");
    assert_eq!(registers.len(), 3, "two throttled attempts, then success");
    assert_eq!(registers.iter().filter(|r| !r.faulted).count(), 1);
    assert_eq!(p.ops("StartSnapshot").len(), 2);
    p.assert_contract_kept();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_after_snapshot_rolls_back_everything() {
    let env = env().await;
    let disk = env.dir.path().join("disk.raw");
    make_disk(&disk, 3);
    // The copy fails for good (not retryable): the home AMI and snapshot exist by then.
    env.proxy.fail("CopyImage", None, || {
        Canned::ec2_error(400, "InvalidParameterValue")
    });

    let err = webake_aws::publish(
        &env.session,
        &request(&disk, "bake-3", "webake-rollback-1"),
        &NoReporter,
    )
    .await
    .unwrap_err();
    let Error::RolledBack {
        source,
        leftovers,
        removed,
        ..
    } = &err
    else {
        panic!("expected a rollback, got {err}")
    };
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(
        removed.len(),
        2,
        "the home AMI and its snapshot: {removed:?}"
    );
    assert_eq!(source.aws_code(), Some("InvalidParameterValue"), "{source}");
    assert!(err.to_string().contains("CopyImage"), "{err}");

    let snapshot_id = {
        let start = env.proxy.ops("StartSnapshot");
        assert_eq!(start.len(), 1);
        let reg = env.proxy.ops("RegisterImage");
        assert_eq!(reg.len(), 1, "the AMI was registered before the failure");
        reg[0].form()["BlockDeviceMapping.1.Ebs.SnapshotId"].clone()
    };
    assert_eq!(env.proxy.ops("DeregisterImage").len(), 1);
    for region in [HOME, COPY] {
        let (images, snaps) = tagged(&env.session.region(region), "bake-3").await;
        assert!(
            images.is_empty() && snaps.is_empty(),
            "{region}: left {images:?} {snaps:?}"
        );
    }
    let gone = env
        .session
        .region(HOME)
        .ec2
        .describe_snapshots()
        .snapshot_ids(&snapshot_id)
        .send()
        .await;
    assert!(
        gone.map(|o| o.snapshots().is_empty()).unwrap_or(true),
        "uploaded snapshot {snapshot_id} still exists"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_failure_deletes_the_partial_snapshot() {
    let env = env().await;
    let disk = env.dir.path().join("disk.raw");
    make_disk(&disk, 3);
    env.proxy.fail("PutSnapshotBlock", None, || {
        Canned::ebs_error(400, "ValidationException")
    });
    let err = webake_aws::publish(
        &env.session,
        &request(&disk, "bake-4", "webake-partial-1"),
        &NoReporter,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, Error::RolledBack { leftovers, .. } if leftovers.is_empty()),
        "{err}"
    );
    assert!(env.proxy.ops("RegisterImage").is_empty());
    assert_eq!(env.proxy.ops("DeleteSnapshot").len(), 1);
    let (images, snaps) = tagged(&env.session.region(HOME), "bake-4").await;
    assert!(
        images.is_empty() && snaps.is_empty(),
        "left {images:?} {snaps:?}"
    );
}

/// Fires a oneshot when a step containing `on` is reported.
struct CancelOn {
    on: &'static str,
    tx: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

impl Reporter for CancelOn {
    fn step(&self, _region: &str, message: &str) {
        if message.contains(self.on)
            && let Some(tx) = self.tx.lock().unwrap().take()
        {
            let _ = tx.send(());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_rolls_back_what_exists() {
    let env = env().await;
    let disk = env.dir.path().join("disk.raw");
    make_disk(&disk, 3);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let reporter = CancelOn {
        on: "waiting for the snapshot",
        tx: Mutex::new(Some(tx)),
    };
    let req = request(&disk, "bake-5", "webake-cancel-1");
    let err = webake_aws::publish_until(&env.session, &req, &reporter, async {
        let _ = rx.await;
    })
    .await
    .unwrap_err();
    assert!(err.is_cancelled(), "{err}");
    assert!(
        matches!(&err, Error::RolledBack { leftovers, .. } if leftovers.is_empty()),
        "{err}"
    );
    assert!(env.proxy.ops("RegisterImage").is_empty());
    assert_eq!(env.proxy.ops("DeleteSnapshot").len(), 1);
    let (images, snaps) = tagged(&env.session.region(HOME), "bake-5").await;
    assert!(
        images.is_empty() && snaps.is_empty(),
        "left {images:?} {snaps:?}"
    );
}

/// The standard `AWS_ENDPOINT_URL` is honoured when no explicit endpoint is set. Runs in a
/// child process so the variable never touches this process's environment.
#[test]
fn endpoint_from_standard_env_var() {
    let moto = Moto::start();
    let proxy = Proxy::start(moto.port);
    let home = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_uses_env_endpoint",
            "--ignored",
            "--nocapture",
        ])
        .env("WEBAKE_TEST_CHILD", "1")
        .env("AWS_ENDPOINT_URL", proxy.url())
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("HOME", home.path())
        .env_remove("AWS_PROFILE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "child failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "child test did not run"
    );
    assert_eq!(
        proxy.ops("DescribeImages").len(),
        1,
        "the call went to AWS_ENDPOINT_URL"
    );
}

#[tokio::test]
#[ignore = "run by endpoint_from_standard_env_var in a child process"]
async fn child_uses_env_endpoint() {
    assert_eq!(std::env::var("WEBAKE_TEST_CHILD").as_deref(), Ok("1"));
    let session = Session::new(HOME, &webake_aws::ClientSettings::default()).await;
    let clients = session.region(HOME);
    clients
        .ec2
        .describe_images()
        .owners("self")
        .send()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_block_is_retried_until_it_goes_through() {
    let env = env().await;
    let disk = env.dir.path().join("disk.raw");
    make_disk(&disk, 2);
    // 8 failures in a row on the first block: more than the SDK's default 3 attempts, within
    // webake's 12.
    env.proxy.fail("PutSnapshotBlock", Some(8), || {
        Canned::ebs_error(503, "ServiceUnavailableException")
    });
    let opts = webake_aws::UploadOptions {
        concurrency: 1,
        tags: vec![(TAG_BAKE_ID.into(), "bake-6".into())],
        ..Default::default()
    };
    let started = Mutex::new(Vec::new());
    let clients = env.session.region(HOME);
    let reporter = Counting::default();
    let summary = webake_aws::upload_snapshot(&clients, &disk, &opts, &reporter, &|id: &str| {
        started.lock().unwrap().push(id.to_string())
    })
    .await
    .unwrap();
    assert_eq!(
        *started.lock().unwrap(),
        vec![summary.snapshot_id.clone()],
        "id reported at start"
    );
    assert_eq!(
        (
            summary.blocks_total,
            summary.blocks_sent,
            summary.blocks_skipped
        ),
        (3, 2, 1)
    );
    assert!(env.proxy.pending_rules().is_empty());
    let puts = env.proxy.ops("PutSnapshotBlock");
    assert_eq!(puts.iter().filter(|p| p.faulted).count(), 8);
    assert_eq!(puts.iter().filter(|p| !p.faulted).count(), 2);
    assert!(
        puts[..9].iter().all(|p| p.path.ends_with("/blocks/0")),
        "block 0 retried until it went through"
    );
    let retries = reporter.retries.lock().unwrap().clone();
    assert_eq!(
        retries,
        vec!["PutSnapshotBlock ServiceUnavailableException".to_string(); 8],
        "every retry reported"
    );
    env.proxy.assert_contract_kept();
}

#[test]
fn missing_moto_fails_with_the_install_command() {
    let empty = tempfile::tempdir().unwrap();
    let path = empty.path().to_str().unwrap().to_string();
    let panic = std::panic::catch_unwind(|| Moto::start_with_path(Some(&path)))
        .err()
        .expect("must fail, not skip");
    let msg = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(
        msg.contains("pip install") && msg.contains("moto[server]"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_after_copies_rolls_back_in_every_region() {
    let env = env().await;
    let disk = env.dir.path().join("disk.raw");
    make_disk(&disk, 2);
    // Sharing is the last step: by then both regions have an AMI and a snapshot.
    env.proxy.fail("ModifySnapshotAttribute", None, || {
        Canned::ec2_error(400, "InvalidParameterValue")
    });
    let err = webake_aws::publish(
        &env.session,
        &request(&disk, "bake-7", "webake-late-fail-1"),
        &NoReporter,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, Error::RolledBack { leftovers, .. } if leftovers.is_empty()),
        "{err}"
    );
    assert_eq!(env.proxy.ops("CopyImage").len(), 1);
    let deregistered: Vec<String> = env
        .proxy
        .ops("DeregisterImage")
        .iter()
        .map(|r| {
            r.header("authorization")
                .unwrap_or_default()
                .split('/')
                .nth(2)
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(deregistered.len(), 2, "both AMIs deregistered");
    assert!(
        deregistered.contains(&HOME.to_string()) && deregistered.contains(&COPY.to_string()),
        "{deregistered:?}"
    );
    for region in [HOME, COPY] {
        let (images, snaps) = tagged(&env.session.region(region), "bake-7").await;
        assert!(
            images.is_empty() && snaps.is_empty(),
            "{region}: left {images:?} {snaps:?}"
        );
    }
}
