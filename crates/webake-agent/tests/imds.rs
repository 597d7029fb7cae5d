//! The IMDSv2 client against the loopback fake: protocol, retries, deadline.

mod support;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use support::{Config, FakeImds, INSTANCE_ID, REGION};
use webake_agent::http::{self, Endpoint, Limits};
use webake_agent::imds::{self, Client, ImdsError, Metadata, Tags, Timeouts};
use webake_agent::{Level, Reporter};

#[derive(Default)]
struct Collect(Mutex<Vec<(Level, String)>>);

impl Reporter for Collect {
    fn log(&self, level: Level, message: &str) {
        self.0.lock().unwrap().push((level, message.to_owned()));
    }
}

impl Collect {
    fn text(&self) -> String {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(l, m)| format!("{l:?}: {m}\n"))
            .collect()
    }
}

fn endpoint(url: &str) -> Endpoint {
    Endpoint::parse(url).unwrap()
}

fn raw(fake: &FakeImds, method: &str, path: &str, headers: &[(&str, &str)]) -> http::Response {
    let limits = Limits {
        connect_timeout: Duration::from_secs(2),
        io_timeout: Duration::from_secs(2),
        deadline: Instant::now() + Duration::from_secs(5),
    };
    http::request(&endpoint(&fake.url()), method, path, headers, limits).unwrap()
}

/// The fake enforces the protocol the real service documents; if it did not, the client tests
/// below would prove nothing.
#[test]
fn fake_imds_enforces_the_imdsv2_protocol() {
    let fake = FakeImds::start(Config::default());
    let ttl = "X-aws-ec2-metadata-token-ttl-seconds";
    assert_eq!(
        raw(&fake, "PUT", "/latest/api/token", &[]).status,
        400,
        "PUT without TTL"
    );
    assert_eq!(
        raw(&fake, "PUT", "/latest/api/token", &[(ttl, "0")]).status,
        400
    );
    assert_eq!(
        raw(&fake, "PUT", "/latest/api/token", &[(ttl, "21601")]).status,
        400
    );
    assert_eq!(
        raw(
            &fake,
            "PUT",
            "/latest/api/token",
            &[(ttl, "60"), ("X-Forwarded-For", "1.2.3.4")]
        )
        .status,
        403
    );
    assert_eq!(raw(&fake, "GET", "/latest/api/token", &[]).status, 405);
    let path = "/latest/meta-data/instance-id";
    assert_eq!(
        raw(&fake, "GET", path, &[]).status,
        401,
        "GET without token"
    );
    let wrong = [("X-aws-ec2-metadata-token", "not-a-token")];
    assert_eq!(raw(&fake, "GET", path, &wrong).status, 401, "wrong token");

    let token = raw(&fake, "PUT", "/latest/api/token", &[(ttl, "21600")]);
    assert_eq!(token.status, 200);
    let good = [("X-aws-ec2-metadata-token", token.body.as_str())];
    let id = raw(&fake, "GET", path, &good);
    assert_eq!((id.status, id.body.as_str()), (200, INSTANCE_ID));
    assert_eq!(
        raw(&fake, "GET", "/latest/meta-data/nope", &good).status,
        404
    );

    fake.revoke_tokens();
    assert_eq!(raw(&fake, "GET", path, &good).status, 401, "expired token");

    let disabled = FakeImds::start(Config::tags_disabled());
    let token = raw(&disabled, "PUT", "/latest/api/token", &[(ttl, "21600")]);
    let good = [("X-aws-ec2-metadata-token", token.body.as_str())];
    assert_eq!(
        raw(&disabled, "GET", "/latest/meta-data/tags/instance", &good).status,
        404
    );
}

#[test]
fn fetches_identity_and_tags_with_one_token() {
    let fake = FakeImds::start(Config {
        tags: Some(vec![
            ("Name".into(), "node".into()),
            ("Environment".into(), "prod".into()),
            ("Role".into(), "ingress".into()),
        ]),
        ..Config::default()
    });
    let log = Collect::default();
    let mut client = Client::new(endpoint(&fake.url()), Timeouts::default(), &log);
    let metadata = imds::fetch(&mut client).unwrap();
    assert_eq!(
        metadata,
        Metadata {
            instance_id: INSTANCE_ID.into(),
            region: REGION.into(),
            tags: Tags::Exposed {
                environment: Some("prod".into()),
                role: Some("ingress".into()),
            },
        }
    );
    let seen = fake.seen();
    assert_eq!(seen[0].method, "PUT");
    assert_eq!(seen[0].path, "/latest/api/token");
    assert_eq!(seen[0].ttl.as_deref(), Some("21600"));
    let token = seen[0].token.clone();
    assert_eq!(token, None, "the token request carries no token");
    assert_eq!(
        seen.iter().filter(|s| s.method == "PUT").count(),
        1,
        "{seen:?}"
    );
    for s in &seen[1..] {
        assert_eq!((s.method.as_str(), s.status), ("GET", 200), "{s:?}");
        assert!(
            s.token
                .as_deref()
                .is_some_and(|t| t.starts_with("AQAEAFAKE")),
            "{s:?}"
        );
    }
    let paths: Vec<&str> = seen.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/latest/api/token",
            "/latest/meta-data/instance-id",
            "/latest/meta-data/placement/region",
            "/latest/meta-data/tags/instance",
            "/latest/meta-data/tags/instance/Environment",
            "/latest/meta-data/tags/instance/Role",
        ]
    );
    let text = log.text();
    assert!(
        !text.contains("AQAEAFAKE"),
        "tokens are never logged:\n{text}"
    );
}

#[test]
fn tags_disabled_is_not_an_error() {
    let fake = FakeImds::start(Config::tags_disabled());
    let log = Collect::default();
    let mut client = Client::new(endpoint(&fake.url()), Timeouts::default(), &log);
    let metadata = imds::fetch(&mut client).unwrap();
    assert_eq!(metadata.tags, Tags::NotExposed);
    // the listing's 404 is enough: no per-key request
    assert!(
        fake.seen()
            .iter()
            .all(|s| !s.path.contains("/tags/instance/"))
    );
}

#[test]
fn missing_tags_are_none() {
    let fake = FakeImds::start(Config {
        tags: Some(vec![("Name".into(), "x".into())]),
        ..Config::default()
    });
    let log = Collect::default();
    let mut client = Client::new(endpoint(&fake.url()), Timeouts::default(), &log);
    let metadata = imds::fetch(&mut client).unwrap();
    assert_eq!(
        metadata.tags,
        Tags::Exposed {
            environment: None,
            role: None
        }
    );
}

#[test]
fn expired_token_is_refreshed_once() {
    let fake = FakeImds::start(Config::default());
    let log = Collect::default();
    let mut client = Client::new(endpoint(&fake.url()), Timeouts::default(), &log);
    assert_eq!(
        client
            .get("/latest/meta-data/instance-id")
            .unwrap()
            .as_deref(),
        Some(INSTANCE_ID)
    );
    fake.revoke_tokens();
    assert_eq!(
        client
            .get("/latest/meta-data/placement/region")
            .unwrap()
            .as_deref(),
        Some(REGION)
    );
    let statuses: Vec<(String, u16)> = fake
        .seen()
        .into_iter()
        .map(|s| (s.method, s.status))
        .collect();
    let expect = [
        ("PUT", 200),
        ("GET", 200),
        ("GET", 401),
        ("PUT", 200),
        ("GET", 200),
    ];
    assert_eq!(
        statuses,
        expect.map(|(m, s)| (m.to_owned(), s)),
        "{}",
        log.text()
    );
    assert!(log.text().contains("401, token rejected"), "{}", log.text());
}

#[test]
fn throttling_is_retried_with_backoff() {
    let fake = FakeImds::start(Config {
        fail_first: 2,
        ..Config::default()
    });
    let log = Collect::default();
    let mut client = Client::new(endpoint(&fake.url()), Timeouts::default(), &log);
    let started = Instant::now();
    let metadata = imds::fetch(&mut client).unwrap();
    assert_eq!(metadata.instance_id, INSTANCE_ID);
    // two backoffs happened: 250 ms + 500 ms
    assert!(
        started.elapsed() >= imds::BACKOFF_INITIAL * 3,
        "{:?}",
        started.elapsed()
    );
    let text = log.text();
    assert!(
        text.contains("attempt 1/4 failed: HTTP 503; retrying"),
        "{text}"
    );
    assert!(
        text.contains("attempt 2/4 failed: HTTP 503; retrying"),
        "{text}"
    );
}

#[test]
fn persistent_5xx_gives_up_after_max_attempts() {
    let fake = FakeImds::start(Config {
        fail_first: 100,
        ..Config::default()
    });
    let log = Collect::default();
    let mut client = Client::new(endpoint(&fake.url()), Timeouts::default(), &log);
    let err = imds::fetch(&mut client).unwrap_err();
    assert!(
        matches!(err, ImdsError::Unreachable { attempts: 4, .. }),
        "{err}"
    );
    assert_eq!(fake.seen().len(), imds::MAX_ATTEMPTS as usize);
    assert!(err.to_string().contains("/latest/api/token"), "{err}");
}

#[test]
fn absent_imds_fails_fast_with_a_clear_error() {
    let url = support::closed_port_url();
    let log = Collect::default();
    let timeouts = Timeouts {
        deadline: Duration::from_secs(10),
        ..Timeouts::default()
    };
    let started = Instant::now();
    let mut client = Client::new(endpoint(&url), timeouts, &log);
    let err = imds::fetch(&mut client).unwrap_err();
    assert!(started.elapsed() < timeouts.deadline + Duration::from_secs(2));
    let message = err.to_string();
    assert!(
        matches!(err, ImdsError::Unreachable { .. }) && message.contains("refused"),
        "{message}"
    );
    assert!(message.contains(&url), "names the endpoint: {message}");
}

#[test]
fn slow_imds_hits_the_deadline() {
    let fake = FakeImds::start(Config {
        delay: Duration::from_secs(30),
        ..Config::default()
    });
    let log = Collect::default();
    let timeouts = Timeouts {
        connect: Duration::from_millis(500),
        io: Duration::from_millis(400),
        deadline: Duration::from_millis(1500),
    };
    let started = Instant::now();
    let mut client = Client::new(endpoint(&fake.url()), timeouts, &log);
    let err = imds::fetch(&mut client).unwrap_err();
    let elapsed = started.elapsed();
    assert!(err.is_deadline(), "{err}\n{}", log.text());
    assert!(
        elapsed < timeouts.deadline + Duration::from_secs(1),
        "{elapsed:?}"
    );
    let message = err.to_string();
    assert!(message.contains("deadline of 1.5 s reached"), "{message}");
    assert!(
        log.text().contains("retrying"),
        "it did retry first:\n{}",
        log.text()
    );
}

#[test]
fn deadline_caps_a_single_long_read() {
    // One read timeout longer than the deadline: the deadline still wins.
    let fake = FakeImds::start(Config {
        delay: Duration::from_secs(30),
        ..Config::default()
    });
    let log = Collect::default();
    let timeouts = Timeouts {
        connect: Duration::from_secs(5),
        io: Duration::from_secs(60),
        deadline: Duration::from_millis(800),
    };
    let started = Instant::now();
    let mut client = Client::new(endpoint(&fake.url()), timeouts, &log);
    let err = imds::fetch(&mut client).unwrap_err();
    assert!(err.is_deadline(), "{err}");
    assert!(started.elapsed() < timeouts.deadline + Duration::from_secs(1));
}

#[test]
fn ipv6_endpoint_literal() {
    let fake = FakeImds::start_on("[::1]:0", Config::default());
    assert!(fake.url().starts_with("http://[::1]:"), "{}", fake.url());
    let log = Collect::default();
    let mut client = Client::new(endpoint(&fake.url()), Timeouts::default(), &log);
    let metadata = imds::fetch(&mut client).unwrap();
    assert_eq!(metadata.instance_id, INSTANCE_ID);
}
