//! Field paths (`provisioners[0].shell.inline[1]`) as they appear in errors.

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Seg {
    Key(String),
    Index(usize),
}

pub fn key(k: &str) -> Seg {
    Seg::Key(k.to_string())
}

pub fn render_path(path: &[Seg]) -> String {
    let mut out = String::new();
    for s in path {
        match s {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// `path` with `prefix` in front.
pub fn join(prefix: &[Seg], rest: impl IntoIterator<Item = Seg>) -> Vec<Seg> {
    let mut v = prefix.to_vec();
    v.extend(rest);
    v
}

/// One of the two paths is a prefix of the other (they name the same value or one holds the
/// other).
pub fn overlaps(a: &[Seg], b: &[Seg]) -> bool {
    let n = a.len().min(b.len());
    a[..n] == b[..n]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_compares_paths() {
        let p = vec![key("p"), Seg::Index(0), key("q")];
        assert_eq!(render_path(&p), "p[0].q");
        assert!(overlaps(&p, &p[..2]));
        assert!(!overlaps(&p, &[key("p"), Seg::Index(1)]));
    }
}
