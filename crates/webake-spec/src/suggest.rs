//! "Did you mean ...?": the closest known word to a misspelled one.

/// Optimal string alignment distance (Levenshtein plus adjacent transpositions), on chars.
pub fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let w = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * w];
    for i in 0..=a.len() {
        d[i * w] = i;
    }
    for (j, cell) in d.iter_mut().enumerate().take(w) {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[(i - 1) * w + j] + 1)
                .min(d[i * w + j - 1] + 1)
                .min(d[(i - 1) * w + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[(i - 2) * w + j - 2] + 1);
            }
            d[i * w + j] = v;
        }
    }
    d[a.len() * w + b.len()]
}

/// How far a word may be from a known one to count as a misspelling of it.
fn threshold(word: &str) -> usize {
    match word.chars().count() {
        0..=2 => 0,
        3..=4 => 1,
        5..=8 => 2,
        _ => 3,
    }
}

/// The known word closest to `word`, if it is close enough to be a likely misspelling
/// (case is ignored for the comparison). Ties go to the first candidate.
pub fn closest<'a, I>(word: &str, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let lower = word.to_lowercase();
    let mut best: Option<(usize, &'a str)> = None;
    for c in candidates {
        let d = distance(&lower, &c.to_lowercase());
        if d <= threshold(word) && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

/// `, did you mean `x`?` or nothing.
pub fn did_you_mean<'a, I>(word: &str, candidates: I) -> String
where
    I: IntoIterator<Item = &'a str>,
{
    match closest(word, candidates) {
        Some(c) if c != word => format!(", did you mean `{c}`?"),
        _ => String::new(),
    }
}

/// "unknown NOUN `word`, did you mean `x`? (expected one of ...)", or without the suggestion
/// "unknown NOUN `word`; expected one of ...".
pub fn unknown<'a, I>(noun: &str, word: &str, candidates: I) -> String
where
    I: IntoIterator<Item = &'a str> + Clone,
{
    let dym = did_you_mean(word, candidates.clone());
    let all = list(candidates);
    if dym.is_empty() {
        format!("unknown {noun} `{word}`; expected one of {all}")
    } else {
        format!("unknown {noun} `{word}`{dym} (expected one of {all})")
    }
}

/// `a`, `b`, `c`
pub fn list<'a, I>(items: I) -> String
where
    I: IntoIterator<Item = &'a str>,
{
    items
        .into_iter()
        .map(|s| format!("`{s}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_counts_transpositions_once() {
        assert_eq!(distance("bookwrom", "bookworm"), 1);
        assert_eq!(distance("destinaton", "destination"), 1);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("kitten", "sitting"), 3);
    }

    #[test]
    fn closest_only_when_close() {
        let fields = ["source", "destination", "mode", "owner"];
        assert_eq!(closest("destinaton", fields), Some("destination"));
        assert_eq!(closest("colour", fields), None);
        assert_eq!(closest("Mode", fields), Some("mode"));
        assert_eq!(
            did_you_mean("qcow", ["raw", "qcow2"]),
            ", did you mean `qcow2`?"
        );
        assert_eq!(did_you_mean("zz", ["raw", "qcow2"]), "");
    }
}
