//! Find the source position of a field path in YAML text (for errors found after parsing).

use serde_saphyr::granit_parser::{Event, Parser};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
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

/// 1-based (line, column) of the node at `path` (for a map key, the key itself), if found.
pub fn locate(src: &str, path: &[Seg]) -> Option<(u64, u64)> {
    // Build a tiny tree of (position, children) by walking events once.
    #[derive(Debug)]
    enum Node {
        Scalar(String, (u64, u64)),
        Seq(Vec<Node>, (u64, u64)),
        Map(Vec<(Node, Node)>, (u64, u64)),
    }
    fn pos(n: &Node) -> (u64, u64) {
        match n {
            Node::Scalar(_, p) | Node::Seq(_, p) | Node::Map(_, p) => *p,
        }
    }
    let mut events = Parser::new_from_str(src)
        .filter_map(Result::ok)
        .map(|(e, span)| (e, (span.start.line() as u64, span.start.col() as u64 + 1)));
    fn node<'a>(
        first: (Event<'a>, (u64, u64)),
        ev: &mut dyn Iterator<Item = (Event<'a>, (u64, u64))>,
    ) -> Option<Node> {
        match first.0 {
            Event::Scalar(v, ..) => Some(Node::Scalar(v.into_owned(), first.1)),
            Event::Alias(..) => Some(Node::Scalar(String::new(), first.1)),
            Event::SequenceStart(..) => {
                let mut items = Vec::new();
                loop {
                    let e = ev.next()?;
                    if matches!(e.0, Event::SequenceEnd) {
                        return Some(Node::Seq(items, first.1));
                    }
                    items.push(node(e, ev)?);
                }
            }
            Event::MappingStart(..) => {
                let mut items = Vec::new();
                loop {
                    let e = ev.next()?;
                    if matches!(e.0, Event::MappingEnd) {
                        return Some(Node::Map(items, first.1));
                    }
                    let k = node(e, ev)?;
                    let v = node(ev.next()?, ev)?;
                    items.push((k, v));
                }
            }
            _ => {
                let next = ev.next()?;
                node(next, ev)
            }
        }
    }
    let first = events.next()?;
    let root = node(first, &mut events)?;
    let mut cur = &root;
    let mut at = pos(cur);
    for seg in path {
        match (seg, cur) {
            (Seg::Key(k), Node::Map(items, _)) => {
                let (kn, vn) = items
                    .iter()
                    .find(|(kn, _)| matches!(kn, Node::Scalar(s, _) if s == k))?;
                at = pos(kn);
                cur = vn;
            }
            (Seg::Index(i), Node::Seq(items, _)) => {
                cur = items.get(*i)?;
                at = pos(cur);
            }
            _ => return Some(at),
        }
    }
    Some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_keys_and_indices() {
        let src = "a: 1\nb:\n  c:\n    - x\n    - y: 2\n";
        assert_eq!(locate(src, &[Seg::Key("a".into())]), Some((1, 1)));
        assert_eq!(
            locate(src, &[Seg::Key("b".into()), Seg::Key("c".into())]),
            Some((3, 3))
        );
        assert_eq!(
            locate(
                src,
                &[
                    Seg::Key("b".into()),
                    Seg::Key("c".into()),
                    Seg::Index(1),
                    Seg::Key("y".into())
                ]
            ),
            Some((5, 7))
        );
        assert_eq!(
            render_path(&[Seg::Key("p".into()), Seg::Index(0), Seg::Key("q".into())]),
            "p[0].q"
        );
    }
}
