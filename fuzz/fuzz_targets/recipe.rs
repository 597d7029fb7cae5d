//! Fuzz the recipe parser: `webake_spec::parse_str` on arbitrary bytes.
//!
//! Invariants (a violation is a crash that libFuzzer saves under fuzz/artifacts/recipe/):
//! - it never panics, overflows its stack or runs away in memory (libFuzzer's -rss_limit_mb);
//! - an error is `Invalid` with a 1-based line and column in the file we named, `Many` of those
//!   (at least two, none nested), or `TooLarge` for inputs over the 1 MiB limit; parsing text
//!   never yields `Read` or `Input` (no file, no `--var`);
//! - a recipe that parses serializes to JSON.
#![no_main]

use std::borrow::Cow;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use webake_spec::{MAX_RECIPE_BYTES, SpecError, parse_str};

fuzz_target!(|data: &[u8]| {
    // Valid UTF-8 goes in as is; anything else is decoded lossily (U+FFFD) so that mutations
    // which break an encoding still reach the parser instead of being thrown away.
    let source: Cow<'_, str> = String::from_utf8_lossy(data);
    let file = Path::new("fuzz.yaml");
    match parse_str(&source, file) {
        Ok(recipe) => {
            let json = serde_json::to_string(&recipe)
                .unwrap_or_else(|e| panic!("parsed recipe does not serialize to JSON: {e}"));
            assert!(!json.is_empty());
        }
        Err(e) => check_error(&e, file),
    }
});

fn check_error(e: &SpecError, file: &Path) {
    // Display must not panic either.
    let text = e.to_string();
    match e {
        SpecError::TooLarge { size, .. } => {
            assert!(*size as usize > MAX_RECIPE_BYTES, "TooLarge for {size} bytes");
        }
        SpecError::Read { .. } => panic!("parse_str returned a Read error: {text}"),
        SpecError::Input { .. } => panic!("parse_str returned an Input error: {text}"),
        SpecError::Invalid { location, .. } => {
            assert_eq!(location.file, file, "{text}");
            assert!(location.line >= 1, "error without a line: {text}");
            assert!(location.column >= 1, "error without a column: {text}");
            assert_eq!(e.location(), Some(location));
        }
        SpecError::Many { errors, .. } => {
            assert!(errors.len() >= 2, "Many with {} error(s): {text}", errors.len());
            for inner in errors {
                assert!(!matches!(inner, SpecError::Many { .. }), "nested Many: {text}");
                check_error(inner, file);
            }
        }
    }
}
