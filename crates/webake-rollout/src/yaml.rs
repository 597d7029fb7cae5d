//! A read-only YAML node tree with byte spans, built from saphyr-parser's marked events.
//!
//! We never serialize YAML back: edits splice the bytes of one scalar (see `edit.rs`), so every
//! other byte of the file (comments, quoting, key order, other documents) stays as it was.
//! saphyr-parser reports positions in characters; they are converted to byte offsets here.

use std::ops::Range;

use saphyr_parser::{Event, Marker, Parser, ScalarStyle};

/// A parse error with a 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct YamlError {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

#[derive(Debug, Clone)]
pub(crate) struct Scalar {
    pub value: String,
    pub style: ScalarStyle,
    /// Byte range of the scalar's source text, including quotes for quoted styles.
    pub bytes: Range<usize>,
    /// 1-based line of the scalar's first character.
    pub line: usize,
}

#[derive(Debug, Clone)]
pub(crate) enum Node {
    Scalar(Scalar),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
    /// An alias (`*name`): never followed, never edited.
    Alias,
}

#[derive(Debug, Clone)]
pub(crate) struct Document {
    pub root: Node,
}

/// One step of a YAML path: a mapping key, a sequence index, or `*` (any key or index).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
    Any,
}

impl Node {
    pub fn as_scalar(&self) -> Option<&Scalar> {
        match self {
            Node::Scalar(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        self.as_scalar().map(|s| s.value.as_str())
    }

    /// The value of `key` in a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// The 1-based line of `key` in a mapping.
    pub fn key_line(&self, key: &str) -> Option<usize> {
        match self {
            Node::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .and_then(|(k, _)| k.as_scalar())
                .map(|k| k.line),
            _ => None,
        }
    }

    pub fn get_path(&self, keys: &[&str]) -> Option<&Node> {
        keys.iter().try_fold(self, |node, key| node.get(key))
    }

    pub fn items(&self) -> &[Node] {
        match self {
            Node::Seq(items) => items,
            _ => &[],
        }
    }

    /// All nodes reached by `path` (several when the path holds `*`), with their concrete path.
    pub fn select<'a>(&'a self, path: &[Seg]) -> Vec<(String, &'a Node)> {
        let mut out = Vec::new();
        select_into(self, path, String::new(), &mut out);
        out
    }
}

fn select_into<'a>(node: &'a Node, path: &[Seg], here: String, out: &mut Vec<(String, &'a Node)>) {
    let Some((seg, rest)) = path.split_first() else {
        out.push((here, node));
        return;
    };
    let key_path = |k: &str| {
        if here.is_empty() {
            k.to_string()
        } else {
            format!("{here}.{k}")
        }
    };
    match (seg, node) {
        (Seg::Key(k), Node::Map(_)) => {
            if let Some(v) = node.get(k) {
                select_into(v, rest, key_path(k), out);
            }
        }
        (Seg::Index(i), Node::Seq(items)) => {
            if let Some(v) = items.get(*i) {
                select_into(v, rest, format!("{here}[{i}]"), out);
            }
        }
        (Seg::Any, Node::Map(entries)) => {
            for (k, v) in entries {
                if let Some(k) = k.as_str() {
                    select_into(v, rest, key_path(k), out);
                }
            }
        }
        (Seg::Any, Node::Seq(items)) => {
            for (i, v) in items.iter().enumerate() {
                select_into(v, rest, format!("{here}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Parse a path such as `spec.image`, `images[0].ami`, `images[*].ami` or `a.*.b`.
/// A key that holds dots or brackets is written in quotes: `metadata.labels."kops.k8s.io/cluster"`.
pub(crate) fn parse_path(path: &str) -> Result<Vec<Seg>, String> {
    let mut segs = Vec::new();
    let mut chars = path.chars().peekable();
    let mut expect_key = true;
    while let Some(&c) = chars.peek() {
        match c {
            '.' if !expect_key => {
                chars.next();
                expect_key = true;
                continue;
            }
            '[' => {
                chars.next();
                let mut inner = String::new();
                loop {
                    match chars.next() {
                        Some(']') => break,
                        Some(c) => inner.push(c),
                        None => return Err(format!("unclosed '[' in path {path:?}")),
                    }
                }
                let inner = inner.trim();
                if inner == "*" {
                    segs.push(Seg::Any);
                } else {
                    let i = inner
                        .parse()
                        .map_err(|_| format!("bad index [{inner}] in path {path:?}"))?;
                    segs.push(Seg::Index(i));
                }
                expect_key = false;
                continue;
            }
            _ if !expect_key => return Err(format!("expected '.' or '[' in path {path:?}")),
            '"' => {
                chars.next();
                let mut key = String::new();
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some(c) => key.push(c),
                        None => return Err(format!("unclosed '\"' in path {path:?}")),
                    }
                }
                segs.push(Seg::Key(key));
            }
            _ => {
                let mut key = String::new();
                while let Some(&c) = chars.peek() {
                    if c == '.' || c == '[' {
                        break;
                    }
                    key.push(c);
                    chars.next();
                }
                if key.is_empty() {
                    return Err(format!("empty key in path {path:?}"));
                }
                segs.push(if key == "*" { Seg::Any } else { Seg::Key(key) });
            }
        }
        expect_key = false;
    }
    if segs.is_empty() || expect_key {
        return Err(format!("incomplete path {path:?}"));
    }
    Ok(segs)
}

/// Maps saphyr's character indices to byte offsets.
struct CharToByte {
    /// Byte offset of each character, plus the text length at the end.
    offsets: Vec<usize>,
}

impl CharToByte {
    fn new(text: &str) -> Self {
        let mut offsets: Vec<usize> = text.char_indices().map(|(b, _)| b).collect();
        offsets.push(text.len());
        Self { offsets }
    }

    fn byte(&self, mark: &Marker) -> usize {
        self.offsets
            .get(mark.index())
            .copied()
            .unwrap_or(*self.offsets.last().unwrap_or(&0))
    }
}

/// Skip an anchor (`&name`) and a tag (`!tag`, `!!str`) before a scalar: saphyr's span starts
/// at them, the value after them.
fn skip_properties(text: &str, mut start: usize) -> usize {
    for _ in 0..2 {
        let Some(rest) = text.get(start..) else { break };
        if !rest.starts_with(['&', '!']) {
            break;
        }
        let token = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let after = &rest[token..];
        let ws = after.len() - after.trim_start_matches([' ', '\t']).len();
        start += token + ws;
    }
    start
}

/// The byte end of the scalar starting at `start`, found from the source text: saphyr's end
/// marker can run past a quoted scalar (over trailing spaces and a comment).
fn scalar_end(text: &str, start: usize, style: ScalarStyle, value: &str) -> Option<usize> {
    let rest = text.get(start..)?;
    match style {
        ScalarStyle::Plain => rest.starts_with(value).then_some(start + value.len()),
        ScalarStyle::SingleQuoted => {
            let body = rest.strip_prefix('\'')?;
            let mut chars = body.char_indices().peekable();
            while let Some((i, c)) = chars.next() {
                if c == '\'' {
                    if chars.peek().is_some_and(|&(_, n)| n == '\'') {
                        chars.next();
                    } else {
                        return Some(start + 1 + i + 1);
                    }
                }
            }
            None
        }
        ScalarStyle::DoubleQuoted => {
            let body = rest.strip_prefix('"')?;
            let mut chars = body.char_indices();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        chars.next();
                    }
                    '"' => return Some(start + 1 + i + 1),
                    _ => {}
                }
            }
            None
        }
        ScalarStyle::Literal | ScalarStyle::Folded => None,
    }
}

/// Parse every document of a (multi-document) YAML text.
pub(crate) fn parse_documents(text: &str) -> Result<Vec<Document>, YamlError> {
    let map = CharToByte::new(text);
    let mut parser = Parser::new_from_str(text);
    let mut docs = Vec::new();
    // A stack of containers being built: (node, pending key for maps).
    enum Frame {
        Seq(Vec<Node>),
        Map(Vec<(Node, Node)>, Option<Node>),
    }
    let mut stack: Vec<Frame> = Vec::new();
    let mut root: Option<Node> = None;

    fn push(stack: &mut [Frame], root: &mut Option<Node>, node: Node) {
        match stack.last_mut() {
            Some(Frame::Seq(items)) => items.push(node),
            Some(Frame::Map(entries, pending)) => match pending.take() {
                Some(key) => entries.push((key, node)),
                None => *pending = Some(node),
            },
            None => *root = Some(node),
        }
    }

    for event in parser.by_ref() {
        let (event, span) = event.map_err(|e| YamlError {
            line: e.marker().line(),
            col: e.marker().col() + 1,
            message: e.info().to_string(),
        })?;
        match event {
            Event::StreamStart | Event::Nothing => {}
            Event::StreamEnd => break,
            Event::DocumentStart(_) => root = None,
            Event::DocumentEnd => {
                docs.push(Document {
                    root: root.take().unwrap_or(Node::Alias),
                });
            }
            Event::Alias(_) => push(&mut stack, &mut root, Node::Alias),
            Event::Scalar(value, style, _anchor, _tag) => {
                let start = skip_properties(text, map.byte(&span.start));
                let end = scalar_end(text, start, style, &value).unwrap_or(map.byte(&span.end));
                let scalar = Scalar {
                    value: value.into_owned(),
                    style,
                    bytes: start..end,
                    line: span.start.line(),
                };
                push(&mut stack, &mut root, Node::Scalar(scalar));
            }
            Event::SequenceStart(..) => stack.push(Frame::Seq(Vec::new())),
            Event::MappingStart(..) => stack.push(Frame::Map(Vec::new(), None)),
            Event::SequenceEnd | Event::MappingEnd => {
                let node = match stack.pop() {
                    Some(Frame::Seq(items)) => Node::Seq(items),
                    Some(Frame::Map(entries, _)) => Node::Map(entries),
                    None => {
                        return Err(YamlError {
                            line: span.start.line(),
                            col: span.start.col() + 1,
                            message: "unbalanced collection end".into(),
                        });
                    }
                };
                push(&mut stack, &mut root, node);
            }
        }
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar_at<'a>(doc: &'a Document, path: &str) -> &'a Scalar {
        let segs = parse_path(path).unwrap();
        let found = doc.root.select(&segs);
        assert_eq!(found.len(), 1, "{path}");
        found[0].1.as_scalar().unwrap()
    }

    #[test]
    fn spans_are_bytes_and_cover_quotes() {
        let text = "# é comment ü\na: \"ami-1\"  # q\nb: 'ami-2'   # x\nc: ami-3 # y\nd: ünï\ne: 'it''s'\nf: \"a\\\"b\" #\n";
        let docs = parse_documents(text).unwrap();
        assert_eq!(docs.len(), 1);
        let a = scalar_at(&docs[0], "a");
        assert_eq!(&text[a.bytes.clone()], "\"ami-1\"");
        assert_eq!(a.line, 2);
        assert_eq!(a.style, ScalarStyle::DoubleQuoted);
        let b = scalar_at(&docs[0], "b");
        assert_eq!(&text[b.bytes.clone()], "'ami-2'");
        let c = scalar_at(&docs[0], "c");
        assert_eq!(&text[c.bytes.clone()], "ami-3");
        let d = scalar_at(&docs[0], "d");
        assert_eq!(&text[d.bytes.clone()], "ünï");
        assert_eq!(&text[scalar_at(&docs[0], "e").bytes.clone()], "'it''s'");
        assert_eq!(&text[scalar_at(&docs[0], "f").bytes.clone()], "\"a\\\"b\"");
        assert_eq!(scalar_at(&docs[0], "f").value, "a\"b");
    }

    #[test]
    fn several_documents_and_nested_paths() {
        let text = "---\nkind: A\nspec:\n  list:\n  - x: 1\n  - x: 2\n---\nkind: B\n...\n";
        let docs = parse_documents(text).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].root.get("kind").and_then(Node::as_str), Some("B"));
        let all = docs[0].root.select(&parse_path("spec.list[*].x").unwrap());
        let paths: Vec<_> = all
            .iter()
            .map(|(p, n)| (p.as_str(), n.as_str().unwrap()))
            .collect();
        assert_eq!(
            paths,
            vec![("spec.list[0].x", "1"), ("spec.list[1].x", "2")]
        );
        assert_eq!(scalar_at(&docs[0], "spec.list[1].x").value, "2");
    }

    #[test]
    fn flow_collections_have_spans() {
        let text = "images: {eu: \"ami-1\", us: ami-2}\n";
        let docs = parse_documents(text).unwrap();
        let us = scalar_at(&docs[0], "images.us");
        assert_eq!(&text[us.bytes.clone()], "ami-2");
        let eu = scalar_at(&docs[0], "images.eu");
        assert_eq!(&text[eu.bytes.clone()], "\"ami-1\"");
    }

    #[test]
    fn parse_errors_have_lines() {
        let err = parse_documents("a: [1, 2\nb: c\n").unwrap_err();
        assert!(err.line >= 1, "{err:?}");
    }

    #[test]
    fn paths_parse() {
        assert_eq!(
            parse_path("metadata.labels.\"kops.k8s.io/cluster\"").unwrap(),
            vec![
                Seg::Key("metadata".into()),
                Seg::Key("labels".into()),
                Seg::Key("kops.k8s.io/cluster".into())
            ]
        );
        assert_eq!(
            parse_path("a[2].*[*]").unwrap(),
            vec![Seg::Key("a".into()), Seg::Index(2), Seg::Any, Seg::Any]
        );
        assert!(parse_path("").is_err());
        assert!(parse_path("a.").is_err());
        assert!(parse_path("a[x]").is_err());
        assert!(parse_path("a..b").is_err());
    }
}
