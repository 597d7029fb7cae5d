//! The failure modes of the real API (issue 18), against moto behind the validating,
//! fault-injecting proxy of `common`. Each test names the case it covers. Every test
//! checks that no request broke the EBS direct API contract; where the publish must fail,
//! that nothing it created is left in any region (asked from moto directly); where a failure
//! was rolled back, that an identical re-run succeeds.
//!
//! Timing is webake's policy scaled down (see `common::fast_timing`): 12 attempts over
//! 0.66 s per call, 1.5 s of "not visible yet" after a creation.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{COPY, COPY2, Canned, Counting, Env, HOME, env, make_disk, request};
use webake_aws::{
    Architecture, BootMode, Error, ImagePlatform, NoReporter, Publication, PublishRequest,
    ResourceKind, SweepScope, TAG_RUN,
};

/// Publish `req` and expect a rollback with nothing left; returns the source error.
async fn publish_rolls_back(env: &Env, req: &PublishRequest, regions: &[&str]) -> Error {
    let err = webake_aws::publish(&env.session, req, &NoReporter)
        .await
        .unwrap_err();
    let Error::RolledBack {
        source,
        leftovers,
        run_id,
        ..
    } = err
    else {
        panic!("expected a rollback, got {err}")
    };
    assert!(leftovers.is_empty(), "rollback left {leftovers:?}");
    assert_eq!(run_id.len(), 16);
    env.proxy.assert_nothing_left(regions, &req.bake_id);
    *source
}

async fn publish_ok(env: &Env, req: &PublishRequest) -> Publication {
    webake_aws::publish(&env.session, req, &NoReporter)
        .await
        .unwrap_or_else(|e| panic!("publish {}: {e}", req.name))
}

// --- 1. "Snapshot does not exist" right after StartSnapshot -----------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case1_snapshot_not_visible_yet_is_retried() {
    let env = env().await;
    let disk = env.dir.path().join("disk.raw");
    make_disk(&disk, 4);
    // The 2-second window, scaled like the policy: blocks are refused for 0.4 s.
    env.proxy
        .set_invisible_after_start(Duration::from_millis(400));
    let reporter = Counting::default();
    let req = request(&disk, "bake-c1", "webake-c1-1");
    let p = webake_aws::publish(&env.session, &req, &reporter)
        .await
        .unwrap();
    assert_eq!(p.regions.len(), 2);
    let refused = env
        .proxy
        .ops("PutSnapshotBlock")
        .iter()
        .filter(|r| r.faulted)
        .count();
    assert!(refused > 0, "the window was hit");
    let retries = reporter.retries();
    assert!(
        retries
            .iter()
            .any(|r| r == "PutSnapshotBlock ResourceNotFoundException"),
        "retries are reported: {retries:?}"
    );
    env.proxy.assert_contract_kept();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case1_snapshot_missing_beyond_the_grace_fails_then_rerun_succeeds() {
    let env = env().await;
    let disk = env.dir.path().join("disk.raw");
    make_disk(&disk, 3);
    // Longer than the grace (1.5 s): "not found" is then an error, not "not ready".
    env.proxy.set_invisible_after_start(Duration::from_secs(30));
    let req = request(&disk, "bake-c1b", "webake-c1b-1");
    let started = Instant::now();
    let source = publish_rolls_back(&env, &req, &[HOME, COPY]).await;
    assert_eq!(
        source.aws_code(),
        Some("ResourceNotFoundException"),
        "{source}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "failed after the grace, not a timeout"
    );
    env.proxy.set_invisible_after_start(Duration::ZERO);
    let p = publish_ok(&env, &req).await;
    assert!(p.regions.values().all(|r| !r.reused));
    env.proxy.assert_contract_kept();
}

// --- 2. ConcurrentLimitExceeded and sustained throttling --------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case2_concurrent_limit_exceeded_is_retried() {
    let env = env().await;
    let disk = env.dir.path().join("disk.raw");
    make_disk(&disk, 4);
    let limit = || Canned::ebs_error(400, "ConcurrentLimitExceededException");
    env.proxy.fail("StartSnapshot", Some(2), limit);
    env.proxy.fail("PutSnapshotBlock", Some(5), limit);
    env.proxy.fail("CompleteSnapshot", Some(1), limit);
    let reporter = Counting::default();
    let req = request(&disk, "bake-c2", "webake-c2-1");
    webake_aws::publish(&env.session, &req, &reporter)
        .await
        .unwrap();
    assert!(env.proxy.pending_rules().is_empty(), "every fault was hit");
    let limited = reporter
        .retries()
        .iter()
        .filter(|r| r.ends_with("ConcurrentLimitExceededException"))
        .count();
    assert_eq!(limited, 8);
    env.proxy.assert_contract_kept();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case2_sustained_throttling_outlasts_any_shared_quota() {
    let env = env().await;
    let disk = env.dir.path().join("disk.raw");
    // 60 blocks, 40 of them non-zero, 16 in flight.
    make_disk(&disk, 60);
    // Every call of every operation is throttled for 0.5 s from its first call.
    for op in [
        "StartSnapshot",
        "PutSnapshotBlock",
        "CompleteSnapshot",
        "DescribeSnapshots",
        "DescribeImages",
        "RegisterImage",
        "CopyImage",
        "CreateTags",
        "ModifyImageAttribute",
        "ModifySnapshotAttribute",
    ] {
        env.proxy.fail_for(op, Duration::from_millis(500), move || {
            Canned::throttled(op)
        });
    }
    let mut req = request(&disk, "bake-c2b", "webake-c2b-1");
    req.concurrency = 16;
    let reporter = Counting::default();
    webake_aws::publish(&env.session, &req, &reporter)
        .await
        .unwrap();
    let throttled_blocks = env
        .proxy
        .ops("PutSnapshotBlock")
        .iter()
        .filter(|r| r.faulted)
        .count();
    // The SDK's standard mode shares 500 tokens between the calls of a client and spends 5
    // per throttling retry: at most 100 retries before every call gets one try. webake's
    // own budget is per call.
    assert!(
        throttled_blocks > 100,
        "only {throttled_blocks} throttled block uploads"
    );
    assert_eq!(reporter.sent.load(Ordering::SeqCst), 41);
    env.proxy.assert_contract_kept();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case2_throttling_beyond_the_budget_fails_after_it_and_rolls_back() {
    let env = env().await;
    let disk = env.dir.path().join("disk.raw");
    make_disk(&disk, 2);
    env.proxy.fail("PutSnapshotBlock", None, || {
        Canned::throttled("PutSnapshotBlock")
    });
    let mut req = request(&disk, "bake-c2c", "webake-c2c-1");
    req.concurrency = 1;
    let source = publish_rolls_back(&env, &req, &[HOME, COPY]).await;
    let Error::Aws(call) = &source else {
        panic!("{source}")
    };
    assert_eq!(
        (call.op, call.attempts),
        ("PutSnapshotBlock", 12),
        "{source}"
    );
    assert_eq!(env.proxy.ops("PutSnapshotBlock").len(), 12);
}

// --- 3. client tokens unique per run; a vanished copy is an error -----------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case3_identical_rerun_after_a_rollback_creates_new_resources() {
    let env = env().await;
    let disk = env.dir.path().join("disk.raw");
    make_disk(&disk, 3);
    let req = request(&disk, "bake-c3", "webake-c3-1");
    env.proxy.fail_in(COPY, "CopyImage", Some(1), || {
        Canned::ec2_error(400, "InvalidParameterValue")
    });
    // The copy fails after CopyImage was called with this run's token.
    let source = publish_rolls_back(&env, &req, &[HOME, COPY]).await;
    assert_eq!(source.aws_code(), Some("InvalidParameterValue"));

    let second = publish_ok(&env, &req).await;
    let starts = env.proxy.ops("StartSnapshot");
    let copies = env.proxy.ops("CopyImage");
    assert_eq!((starts.len(), copies.len()), (2, 2));
    let token = |r: &common::Recorded| r.json()["ClientToken"].as_str().unwrap().to_string();
    assert_ne!(token(&starts[0]), token(&starts[1]), "StartSnapshot tokens");
    assert_ne!(
        copies[0].form()["ClientToken"],
        copies[1].form()["ClientToken"],
        "CopyImage tokens"
    );
    let created: Vec<_> = env
        .proxy
        .created()
        .into_iter()
        .filter(|c| c.region == HOME && c.kind == "snapshot")
        .collect();
    assert_eq!(created.len(), 2, "a new snapshot: {created:?}");
    assert_eq!(second.regions[HOME].snapshot_id, created[1].id);
    env.proxy.assert_contract_kept();
}

/// The model behind case 3: EBS answers a repeated StartSnapshot token with the original
/// snapshot even after it was deleted, and its blocks are then refused. This is what an
/// identical re-run got back before tokens carried the run id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case3_model_a_repeated_token_returns_the_deleted_snapshot() {
    let env = env().await;
    let clients = env.session.region(HOME);
    let start = || async {
        clients
            .ebs
            .start_snapshot()
            .volume_size(1)
            .client_token("same-token")
            .send()
            .await
            .unwrap()
            .snapshot_id()
            .unwrap()
            .to_string()
    };
    let first = start().await;
    clients
        .ec2
        .delete_snapshot()
        .snapshot_id(&first)
        .send()
        .await
        .unwrap();
    assert_eq!(
        start().await,
        first,
        "the original answer, for a deleted snapshot"
    );
    let block = vec![1u8; webake_aws::EBS_BLOCK_SIZE];
    let err = clients
        .ebs
        .put_snapshot_block()
        .snapshot_id(&first)
        .block_index(0)
        .block_data(block.clone().into())
        .data_length(block.len() as i32)
        .checksum(webake_aws::block_checksum(&block))
        .checksum_algorithm(aws_sdk_ebs::types::ChecksumAlgorithm::ChecksumAlgorithmSha256)
        .send()
        .await
        .unwrap_err();
    assert!(
        format!("{err:?}").contains("ResourceNotFoundException"),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case3_a_vanished_copy_is_an_error_not_a_wait() {
    let env = env().await;
    let disk = env.dir.path().join("disk.raw");
    make_disk(&disk, 2);
    env.proxy.vanish_copy(COPY);
    let req = request(&disk, "bake-c3b", "webake-c3b-1");
    let started = Instant::now();
    let source = publish_rolls_back(&env, &req, &[HOME, COPY]).await;
    assert!(matches!(source, Error::Vanished { .. }), "{source}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the image timeout is 30 s: failed after the grace instead"
    );
    env.proxy.assert_contract_kept();
}

// --- 4. rollback gaps --------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case4_a_copy_in_flight_when_another_fails_is_recorded_and_removed() {
    let env = env().await;
    let disk = env.dir.path().join("disk.raw");
    make_disk(&disk, 2);
    let mut req = request(&disk, "bake-c4", "webake-c4-1");
    req.copy_to = vec![COPY.into(), COPY2.into()];
    env.proxy.fail_in(COPY, "CopyImage", None, || {
        Canned::ec2_error(400, "InvalidParameterValue")
    });
    // COPY2's CopyImage is sent at once and answered after 0.8 s; COPY's fails at ~0.3 s,
    // while COPY2's answer is still on its way.
    env.proxy
        .delay("CopyImage", COPY2, Duration::from_millis(800), Some(1));
    env.proxy
        .delay("DescribeImages", COPY, Duration::from_millis(300), Some(1));
    let err = webake_aws::publish(&env.session, &req, &NoReporter)
        .await
        .unwrap_err();
    let Error::RolledBack {
        source,
        removed,
        leftovers,
        ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(source.aws_code(), Some("InvalidParameterValue"));
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let copy2 = env.proxy.ops_in("CopyImage", COPY2);
    assert_eq!(copy2.len(), 1);
    assert!(!copy2[0].faulted, "the COPY2 copy was really made");
    let failed_at = env.proxy.ops_in("CopyImage", COPY)[0].at;
    assert!(
        copy2[0].at < failed_at,
        "COPY2's CopyImage was in flight when COPY's failed"
    );
    assert!(
        removed
            .iter()
            .any(|r| r.region == COPY2 && r.kind == ResourceKind::Image),
        "the in-flight copy was removed: {removed:?}"
    );
    env.proxy
        .assert_nothing_left(&[HOME, COPY, COPY2], &req.bake_id);
    // The rolled-back failure does not stop an identical re-run (once COPY works again).
    env.proxy.clear_rules();
    let p = publish_ok(&env, &req).await;
    assert_eq!(p.regions.len(), 3);
    env.proxy.assert_contract_kept();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case4_cancelling_awaits_the_copy_in_flight_and_removes_it() {
    let env = env().await;
    let disk = env.dir.path().join("disk.raw");
    make_disk(&disk, 2);
    env.proxy
        .delay("CopyImage", COPY, Duration::from_millis(800), Some(1));
    let req = request(&disk, "bake-c4f", "webake-c4f-1");
    // Ctrl-C while CopyImage is on its way (held 0.8 s by the proxy).
    let proxy = &env.proxy;
    let cancelled = async {
        while proxy.ops_in("CopyImage", COPY).is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let err = webake_aws::publish_until(&env.session, &req, &NoReporter, cancelled)
        .await
        .unwrap_err();
    assert!(err.is_cancelled(), "{err}");
    let Error::RolledBack {
        removed, leftovers, ..
    } = &err
    else {
        panic!("{err}")
    };
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(
        removed
            .iter()
            .any(|r| r.region == COPY && r.kind == ResourceKind::Image),
        "the copy answered after the cancel was recorded and removed: {removed:?}"
    );
    env.proxy.assert_nothing_left(&[HOME, COPY], &req.bake_id);
    env.proxy.assert_contract_kept();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case4_delete_snapshot_in_use_after_deregister_is_retried() {
    let env = env().await;
    let disk = env.dir.path().join("disk.raw");
    make_disk(&disk, 2);
    // Each snapshot of a deregistered AMI is refused as in use 5 times.
    env.proxy.set_in_use_after_deregister(5);
    // Sharing is the last step: by then both regions have an AMI and a snapshot.
    env.proxy.fail("ModifySnapshotAttribute", None, || {
        Canned::ec2_error(400, "InvalidParameterValue")
    });
    let req = request(&disk, "bake-c4b", "webake-c4b-1");
    publish_rolls_back(&env, &req, &[HOME, COPY]).await;
    let in_use = env
        .proxy
        .ops("DeleteSnapshot")
        .iter()
        .filter(|r| r.faulted)
        .count();
    assert_eq!(
        in_use, 10,
        "both snapshots met InvalidSnapshot.InUse 5 times"
    );
    env.proxy.clear_rules();
    publish_ok(&env, &req).await;
    env.proxy.assert_contract_kept();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case4_a_lost_register_answer_is_adopted() {
    let env = env().await;
    let disk = env.dir.path().join("disk.raw");
    make_disk(&disk, 2);
    // RegisterImage takes effect but its answer is a 500: the retry meets
    // InvalidAMIName.Duplicate, and the AMI holding the name carries this run's tag.
    env.proxy.lose_answer("RegisterImage", Some(HOME), Some(1));
    let req = request(&disk, "bake-c4c", "webake-c4c-1");
    let p = publish_ok(&env, &req).await;
    let registers = env.proxy.ops("RegisterImage");
    assert_eq!(registers.len(), 2);
    assert!(
        registers[1].faulted,
        "the second attempt was refused as a duplicate"
    );
    let (images, _) = env.proxy.tagged(HOME, TAG_RUN, &p.run_id);
    assert_eq!(
        images,
        vec![p.regions[HOME].ami_id.clone()],
        "one AMI, the adopted one"
    );
    env.proxy.assert_contract_kept();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case4_a_lost_register_answer_is_found_by_name_and_tag_in_the_rollback() {
    let env = env().await;
    let disk = env.dir.path().join("disk.raw");
    make_disk(&disk, 2);
    // The first RegisterImage takes effect and its answer is lost; every retry is throttled
    // until the budget is spent, so the AMI's id is never seen.
    env.proxy.lose_answer("RegisterImage", Some(HOME), Some(1));
    env.proxy
        .fail("RegisterImage", None, || Canned::throttled("RegisterImage"));
    let req = request(&disk, "bake-c4d", "webake-c4d-1");
    let source = publish_rolls_back(&env, &req, &[HOME, COPY]).await;
    assert_eq!(source.aws_code(), Some("RequestLimitExceeded"), "{source}");
    let created_images: Vec<_> = env
        .proxy
        .created()
        .into_iter()
        .filter(|c| c.kind == "image")
        .collect();
    assert_eq!(
        created_images.len(),
        1,
        "the unseen AMI existed: {created_images:?}"
    );
    assert_eq!(
        env.proxy.ops("DeregisterImage").len(),
        1,
        "and was deregistered"
    );
    env.proxy.clear_rules();
    publish_ok(&env, &req).await;
    env.proxy.assert_contract_kept();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case4_a_lost_copy_answer_is_found_by_tag_in_the_rollback() {
    let env = env().await;
    let disk = env.dir.path().join("disk.raw");
    make_disk(&disk, 2);
    env.proxy.lose_answer("CopyImage", Some(COPY), Some(1));
    env.proxy
        .fail_in(COPY, "CopyImage", None, || Canned::throttled("CopyImage"));
    let req = request(&disk, "bake-c4e", "webake-c4e-1");
    let err = webake_aws::publish(&env.session, &req, &NoReporter)
        .await
        .unwrap_err();
    let Error::RolledBack {
        removed, leftovers, ..
    } = &err
    else {
        panic!("{err}")
    };
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(
        removed
            .iter()
            .any(|r| r.region == COPY && r.kind == ResourceKind::Image)
            && removed
                .iter()
                .any(|r| r.region == COPY && r.kind == ResourceKind::Snapshot),
        "the unseen copy and its snapshot were found and removed: {removed:?}"
    );
    env.proxy.assert_nothing_left(&[HOME, COPY], &req.bake_id);
    env.proxy.assert_contract_kept();
}

// --- 5. sweep by tags, whatever the bake's status ----------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case5_sweep_plans_and_removes_what_no_publication_accounts_for() {
    let env = env().await;
    let disk = env.dir.path().join("disk.raw");
    make_disk(&disk, 2);
    // Bake "done" succeeded and was published (the catalog knows these ids) ...
    let kept = publish_ok(&env, &request(&disk, "done", "webake-done-1")).await;
    // ... and a second publish of the same bake left an AMI pair and a loose snapshot behind
    // (say the process was killed before its rollback): no publication accounts for them.
    let lost = publish_ok(&env, &request(&disk, "done", "webake-done-lost")).await;
    let loose = webake_aws::upload_snapshot(
        &env.session.region(HOME),
        &disk,
        &webake_aws::UploadOptions {
            tags: vec![("webake:bake-id".into(), "done".into())],
            ..Default::default()
        },
        &NoReporter,
        &|_: &str| {},
    )
    .await
    .unwrap();
    // Another catalog's bake: out of scope.
    let other = publish_ok(&env, &request(&disk, "other", "webake-other-1")).await;

    let regions = vec![HOME.to_string(), COPY.to_string()];
    let scope = SweepScope {
        bake_ids: Some(vec!["done".into()]),
        keep_images: kept.regions.values().map(|r| r.ami_id.clone()).collect(),
        keep_snapshots: kept
            .regions
            .values()
            .map(|r| r.snapshot_id.clone())
            .collect(),
    };
    env.proxy.clear_log();
    let plan = webake_aws::plan_sweep(&env.session, &regions, &scope)
        .await
        .unwrap();
    for op in ["DeregisterImage", "DeleteSnapshot"] {
        assert!(env.proxy.ops(op).is_empty(), "planning called {op}");
    }
    let mut planned: Vec<(String, String)> = plan
        .items
        .iter()
        .map(|i| (i.resource.region.clone(), i.resource.id.clone()))
        .collect();
    for i in &plan.items {
        planned.extend(
            i.snapshots
                .iter()
                .map(|s| (i.resource.region.clone(), s.clone())),
        );
    }
    planned.sort();
    let mut expected: Vec<(String, String)> = lost
        .regions
        .iter()
        .flat_map(|(r, i)| {
            [
                (r.clone(), i.ami_id.clone()),
                (r.clone(), i.snapshot_id.clone()),
            ]
        })
        .collect();
    expected.push((HOME.into(), loose.snapshot_id.clone()));
    expected.sort();
    assert_eq!(planned, expected, "{plan:#?}");
    assert_eq!(
        plan.items[0].resource.kind,
        ResourceKind::Image,
        "AMIs come first"
    );

    let report = webake_aws::execute_sweep(&env.session, &plan, &NoReporter).await;
    assert!(report.leftovers.is_empty(), "{report:?}");
    assert_eq!(report.removed.len(), expected.len(), "{report:?}");
    for (region, image) in &lost.regions {
        let (images, snaps) = env.proxy.tagged(region, TAG_RUN, &lost.run_id);
        assert!(images.is_empty() && snaps.is_empty(), "{region}: {image:?}");
    }
    for p in [&kept, &other] {
        for (region, image) in &p.regions {
            let (images, snaps) = env.proxy.tagged(region, TAG_RUN, &p.run_id);
            assert_eq!(images, vec![image.ami_id.clone()], "{region} kept");
            assert!(
                snaps.contains(&image.snapshot_id),
                "{region} kept {snaps:?}"
            );
        }
    }
    let again = webake_aws::plan_sweep(&env.session, &regions, &scope)
        .await
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
    env.proxy.assert_contract_kept();
}

// --- 6. architecture, boot mode, ENA and IMDS come with the request ----------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case6_platform_of_the_image_reaches_register_image() {
    let env = env().await;
    let disk = env.dir.path().join("disk.raw");
    make_disk(&disk, 2);
    let mut req = request(&disk, "bake-c6", "webake-c6-arm64");
    req.copy_to.clear();
    req.share_with.clear();
    req.platform = ImagePlatform {
        architecture: Architecture::Arm64,
        boot_mode: BootMode::UefiPreferred,
        ena_support: false,
        imds_v2_only: false,
        tpm_support: false,
    };
    let p = publish_ok(&env, &req).await;
    assert_eq!(p.architecture, Architecture::Arm64);
    let f = env.proxy.ops("RegisterImage")[0].form();
    assert_eq!(f["Architecture"], "arm64");
    assert_eq!(f["BootMode"], "uefi-preferred");
    assert_eq!(f["EnaSupport"], "false");
    assert!(!f.contains_key("ImdsSupport"), "{f:?}");
    env.proxy.assert_contract_kept();
}

// --- the validator itself ----------------------------------------------------------------

/// The proxy refuses (and records) requests that break the EBS contract, so "no
/// violations" in the other tests means something.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_catches_contract_violations() {
    let env = env().await;
    let clients = env.session.region(HOME);
    let id = clients
        .ebs
        .start_snapshot()
        .volume_size(1)
        .send()
        .await
        .unwrap()
        .snapshot_id()
        .unwrap()
        .to_string();
    let block = vec![7u8; webake_aws::EBS_BLOCK_SIZE];
    let put = |checksum: String| {
        clients
            .ebs
            .put_snapshot_block()
            .snapshot_id(&id)
            .block_index(0)
            .block_data(block.clone().into())
            .data_length(block.len() as i32)
            .checksum(checksum)
            .checksum_algorithm(aws_sdk_ebs::types::ChecksumAlgorithm::ChecksumAlgorithmSha256)
            .send()
    };
    let bad = put(webake_aws::block_checksum(b"other")).await.unwrap_err();
    assert!(
        format!("{bad:?}").contains("ValidationException"),
        "{bad:?}"
    );
    put(webake_aws::block_checksum(&block)).await.unwrap();
    let complete = clients
        .ebs
        .complete_snapshot()
        .snapshot_id(&id)
        .changed_blocks_count(2)
        .send()
        .await
        .unwrap_err();
    assert!(format!("{complete:?}").contains("ValidationException"));
    let v = env.proxy.violations();
    assert_eq!(v.len(), 2, "{v:?}");
    assert!(
        v[0].contains("checksum") && v[1].contains("ChangedBlocksCount"),
        "{v:?}"
    );
}
