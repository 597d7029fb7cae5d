//! Check upstream for the default Debian sources of a base, and time it.
//!
//! ```text
//! cargo run -p webake-upstream --example check -- [--mirror URL] [--security-mirror URL]
//!     [--suite bookworm] [--keyring PATH] [--state-out FILE] [--state-in FILE]
//!     [--status DPKG-STATUS] [--candidates]
//! ```
//!
//! Prints one line per source and the time of each phase. With `--state-in` (a state written
//! by `--state-out`) it compares and, with `--status`, gives the freshness verdict for the
//! packages of that dpkg status file; `--candidates` lists the candidates over every source.

use std::path::PathBuf;
use std::time::Instant;

use webake_upstream::{
    Client, ClientOptions, DebianSuites, Freshness, UpstreamState, compare, debian_sources,
    freshness,
};

#[derive(Default)]
struct Args {
    mirror: Option<String>,
    security_mirror: Option<String>,
    suite: Option<String>,
    keyring: Option<PathBuf>,
    state_out: Option<PathBuf>,
    state_in: Option<PathBuf>,
    status: Option<PathBuf>,
    candidates: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args::default();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--mirror" => a.mirror = Some(value()?),
            "--security-mirror" => a.security_mirror = Some(value()?),
            "--suite" => a.suite = Some(value()?),
            "--keyring" => a.keyring = Some(value()?.into()),
            "--state-out" => a.state_out = Some(value()?.into()),
            "--state-in" => a.state_in = Some(value()?.into()),
            "--status" => a.status = Some(value()?.into()),
            "--candidates" => a.candidates = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let mut suites = DebianSuites::new(
        args.mirror
            .as_deref()
            .unwrap_or("http://deb.debian.org/debian"),
        args.suite.as_deref().unwrap_or("bookworm"),
    );
    suites.security_mirror = args.security_mirror.clone();
    if let Some(k) = &args.keyring {
        suites.signed_by = vec![k.clone()];
    }
    let sources = debian_sources(&suites);
    let client = Client::new(ClientOptions::default());

    let t = Instant::now();
    let state = client.check(&sources)?;
    let check_time = t.elapsed();
    for s in &state.sources {
        match &s.release {
            Some(r) => println!(
                "{} {}: Date {}, {} index(es), InRelease sha256 {}",
                s.uri,
                s.suite,
                r.date,
                r.indexes.len(),
                &r.inrelease_sha256[..12]
            ),
            None => println!("{} {}: pinned, not fetched", s.uri, s.suite),
        }
    }
    println!("check: {:.3} s", check_time.as_secs_f64());
    if let Some(out) = &args.state_out {
        std::fs::write(out, serde_json::to_string_pretty(&state)?)?;
    }

    let installed = match &args.status {
        Some(p) => {
            let text = std::fs::read_to_string(p)?;
            webake_inventory::parse_status(&text, p)?
        }
        None => Vec::new(),
    };

    if let Some(path) = &args.state_in {
        let recorded: UpstreamState = serde_json::from_str(&std::fs::read_to_string(path)?)?;
        let t = Instant::now();
        let verdict = freshness(&client, &recorded, &state, &installed)?;
        let verdict_time = t.elapsed();
        match &verdict {
            Freshness::UpToDate { .. } => println!(
                "up to date with upstream (unchanged since {})",
                recorded.newest_date().unwrap_or("?")
            ),
            Freshness::NoImageUpdates { comparison } => println!(
                "upstream moved ({} source(s)), none of the {} packages has an update",
                comparison.moved().len(),
                installed.len()
            ),
            Freshness::Updates { candidates, .. } => {
                println!("{} packages have updates", candidates.len())
            }
        }
        for s in &compare(&recorded, &state).sources {
            println!("  {} {}: {:?}", s.uri, s.suite, s.change);
        }
        println!("verdict: {:.3} s", verdict_time.as_secs_f64());
        println!(
            "total (check + verdict): {:.3} s",
            (check_time + verdict_time).as_secs_f64()
        );
    }

    if args.candidates {
        let t = Instant::now();
        let candidates = client.candidates(&installed, &state)?;
        let took = t.elapsed();
        for c in &candidates {
            println!(
                "  {} {} -> {} ({}){}",
                c.name,
                c.installed,
                c.candidate,
                c.suite,
                if c.security { " [security]" } else { "" }
            );
        }
        println!(
            "candidates: {} of {} installed packages, {:.3} s",
            candidates.len(),
            installed.len(),
            took.as_secs_f64()
        );
    }
    Ok(())
}
