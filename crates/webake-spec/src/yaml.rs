//! A YAML document as a tree of positioned nodes.
//!
//! Recipes (and var files) are read into this tree first and deserialized from it (`de.rs`), so
//! that every error names a line, a column and a field path, and so that one run can report
//! several errors. Aliases are expanded (within a budget), `<<` merge keys applied, duplicate
//! keys reported.

use std::collections::HashMap;

use serde_saphyr::granit_parser::{Event, Options, Parser, ScalarStyle, ScanError, Span, Tag};

use crate::locate::Seg;

pub type NodeId = usize;

/// 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    pub line: u64,
    pub col: u64,
}

impl Pos {
    pub const START: Pos = Pos { line: 1, col: 1 };
}

#[derive(Debug, Clone)]
pub struct Node {
    pub id: NodeId,
    pub pos: Pos,
    pub kind: Kind,
}

#[derive(Debug, Clone)]
pub enum Kind {
    /// `plain`: written without quotes, tag or block indicator, so `1` is a number and `true`
    /// a boolean.
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub key: String,
    pub key_pos: Pos,
    pub value: Node,
}

/// A problem at a place in a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub pos: Pos,
    pub path: Vec<Seg>,
    pub message: String,
}

pub struct Limits {
    pub max_depth: usize,
    pub max_nodes: usize,
    pub max_aliases: usize,
    pub max_anchors: usize,
}

pub struct Tree {
    pub root: Node,
    /// Problems that do not stop reading (duplicate keys, unsupported tags).
    pub problems: Vec<Problem>,
}

impl Node {
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Scalar { text, plain: true } if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    pub fn scalar(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar { text, .. } if !self.is_null() => Some(text),
            _ => None,
        }
    }

    /// The entry of a mapping node.
    pub fn entry(&self, key: &str) -> Option<&Entry> {
        match &self.kind {
            Kind::Map(es) => es.iter().find(|e| e.key == key),
            _ => None,
        }
    }

    /// Visit this node and every node below it, with its path and (for mapping values) the
    /// position of its key.
    pub fn walk<'a>(&'a self, path: &mut Vec<Seg>, f: &mut dyn FnMut(&[Seg], &'a Node)) {
        f(path, self);
        match &self.kind {
            Kind::Scalar { .. } => {}
            Kind::Seq(items) => {
                for (i, n) in items.iter().enumerate() {
                    path.push(Seg::Index(i));
                    n.walk(path, f);
                    path.pop();
                }
            }
            Kind::Map(es) => {
                for e in es {
                    path.push(Seg::Key(e.key.clone()));
                    e.value.walk(path, f);
                    path.pop();
                }
            }
        }
    }
}

impl Tree {
    /// The node at a path (indices as written in the document).
    pub fn get(&self, path: &[Seg]) -> Option<&Node> {
        let mut cur = &self.root;
        for s in path {
            cur = match (s, &cur.kind) {
                (Seg::Key(k), Kind::Map(_)) => &cur.entry(k)?.value,
                (Seg::Index(i), Kind::Seq(items)) => items.get(*i)?,
                _ => return None,
            };
        }
        Some(cur)
    }

    /// Where the value at `path` is written: a mapping value is located at its key. `path` may
    /// count list items after some were `dropped` (removed after an error): the returned path
    /// uses the indices as written. Locates the deepest part of the path that exists.
    pub fn locate(&self, path: &[Seg], dropped: &dyn Fn(NodeId) -> bool) -> (Pos, Vec<Seg>) {
        let mut cur = &self.root;
        let mut at = cur.pos;
        let mut out = Vec::new();
        for (n, s) in path.iter().enumerate() {
            let next = match (s, &cur.kind) {
                (Seg::Key(k), Kind::Map(es)) => es
                    .iter()
                    .find(|e| e.key == *k && !dropped(e.value.id))
                    .map(|e| (e.key_pos, Seg::Key(k.clone()), &e.value)),
                (Seg::Index(i), Kind::Seq(items)) => items
                    .iter()
                    .enumerate()
                    .filter(|(_, it)| !dropped(it.id))
                    .nth(*i)
                    .map(|(j, it)| (it.pos, Seg::Index(j), it)),
                _ => None,
            };
            match next {
                Some((pos, seg, node)) => {
                    at = pos;
                    out.push(seg);
                    cur = node;
                }
                None => {
                    out.extend(path[n..].iter().cloned());
                    break;
                }
            }
        }
        (at, out)
    }

    pub fn index(&self) -> HashMap<NodeId, &Node> {
        let mut m = HashMap::new();
        self.root.walk(&mut Vec::new(), &mut |_, n| {
            m.insert(n.id, n);
        });
        m
    }
}

/// Read one YAML document. A syntax error (or a budget exceeded) is the only hard error.
pub fn parse(src: &str, limits: &Limits) -> Result<Tree, Problem> {
    let mut options = Options::default();
    options.set_emit_comments(false);
    let mut b = Builder {
        events: Parser::new_from_str_with_options(src, options),
        limits,
        next_id: 0,
        nodes: 0,
        aliases: 0,
        anchors: HashMap::new(),
        problems: Vec::new(),
        last: Pos::START,
        src,
    };
    let mut path = Vec::new();
    let mut root = None;
    loop {
        let (ev, span) = match b.events.next() {
            None => break,
            Some(r) => r.map_err(|e| b.syntax(&e, &path))?,
        };
        b.last = pos_of(&span);
        match ev {
            Event::StreamStart | Event::DocumentEnd | Event::StreamEnd => {}
            Event::DocumentStart(..) => {
                if root.is_some() {
                    return Err(Problem {
                        pos: pos_of(&span),
                        path: Vec::new(),
                        message: "expected one YAML document, found a second one (`---`)".into(),
                    });
                }
                let (ev, span) = b.next(&path)?;
                if matches!(ev, Event::DocumentEnd) {
                    root = Some(b.null(pos_of(&span)));
                } else {
                    root = Some(b.node(ev, span, 1, &mut path)?);
                }
            }
            _ => {}
        }
    }
    let root = match root {
        Some(r) => r,
        None => b.null(Pos::START),
    };
    Ok(Tree {
        root,
        problems: b.problems,
    })
}

fn pos_of(span: &Span) -> Pos {
    Pos {
        line: span.start.line() as u64,
        col: span.start.col() as u64 + 1,
    }
}

struct Builder<'a, 'l, I> {
    events: I,
    limits: &'l Limits,
    next_id: NodeId,
    nodes: usize,
    aliases: usize,
    anchors: HashMap<usize, Node>,
    problems: Vec<Problem>,
    last: Pos,
    src: &'a str,
}

impl<'a, I> Builder<'a, '_, I>
where
    I: Iterator<Item = Result<(Event<'a>, Span), ScanError>>,
{
    fn id(&mut self) -> NodeId {
        self.next_id += 1;
        self.next_id
    }

    fn null(&mut self, pos: Pos) -> Node {
        Node {
            id: self.id(),
            pos,
            kind: Kind::Scalar {
                text: String::new(),
                plain: true,
            },
        }
    }

    fn next(&mut self, path: &[Seg]) -> Result<(Event<'a>, Span), Problem> {
        loop {
            match self.events.next() {
                None => {
                    return Err(problem(
                        self.last,
                        path,
                        "the document ends in the middle of a value",
                    ));
                }
                Some(Err(e)) => return Err(self.syntax(&e, path)),
                Some(Ok((ev, span))) => {
                    self.last = pos_of(&span);
                    match ev {
                        Event::Scalar(..)
                        | Event::SequenceStart(..)
                        | Event::SequenceEnd
                        | Event::MappingStart(..)
                        | Event::MappingEnd
                        | Event::Alias(..)
                        | Event::DocumentEnd => return Ok((ev, span)),
                        _ => {}
                    }
                }
            }
        }
    }

    fn syntax(&self, e: &ScanError, path: &[Seg]) -> Problem {
        let m = e.marker();
        let pos = Pos {
            line: m.line() as u64,
            col: m.col() as u64 + 1,
        };
        problem(pos, path, explain_syntax(&e.info(), self.src, pos))
    }

    fn count(&mut self, n: usize, pos: Pos, path: &[Seg]) -> Result<(), Problem> {
        self.nodes += n;
        if self.nodes > self.limits.max_nodes {
            return Err(problem(
                pos,
                path,
                format!(
                    "expected at most {} values in a recipe, found more (are aliases expanding too much?)",
                    self.limits.max_nodes
                ),
            ));
        }
        Ok(())
    }

    fn too_deep(&self, pos: Pos, path: &[Seg]) -> Problem {
        problem(
            pos,
            path,
            format!(
                "expected at most {} levels of nesting, found more",
                self.limits.max_depth
            ),
        )
    }

    fn anchor(&mut self, anchor: usize, n: &Node, path: &[Seg]) -> Result<(), Problem> {
        if anchor == 0 {
            return Ok(());
        }
        if self.anchors.len() >= self.limits.max_anchors {
            return Err(problem(
                n.pos,
                path,
                format!(
                    "expected at most {} anchors (`&name`), found more",
                    self.limits.max_anchors
                ),
            ));
        }
        self.anchors.insert(anchor, n.clone());
        Ok(())
    }

    fn check_tag(&mut self, tag: Option<&Tag>, pos: Pos, path: &[Seg]) {
        if let Some(t) = tag
            && t.core_suffix().is_none()
        {
            self.problems.push(problem(
                pos,
                path,
                format!(
                    "the YAML tag `{}` is not supported here; remove it",
                    t.original()
                ),
            ));
        }
    }

    /// A copy of an anchored node with fresh ids (so that an error in one use does not remove
    /// the others).
    fn refresh(&mut self, n: &Node, depth: usize, path: &[Seg]) -> Result<Node, Problem> {
        if depth > self.limits.max_depth {
            return Err(self.too_deep(n.pos, path));
        }
        self.count(1, n.pos, path)?;
        let kind = match &n.kind {
            Kind::Scalar { .. } => n.kind.clone(),
            Kind::Seq(items) => Kind::Seq(
                items
                    .iter()
                    .map(|i| self.refresh(i, depth + 1, path))
                    .collect::<Result<_, _>>()?,
            ),
            Kind::Map(es) => Kind::Map(
                es.iter()
                    .map(|e| {
                        Ok(Entry {
                            key: e.key.clone(),
                            key_pos: e.key_pos,
                            value: self.refresh(&e.value, depth + 1, path)?,
                        })
                    })
                    .collect::<Result<_, _>>()?,
            ),
        };
        Ok(Node {
            id: self.id(),
            pos: n.pos,
            kind,
        })
    }

    fn node(
        &mut self,
        ev: Event<'a>,
        span: Span,
        depth: usize,
        path: &mut Vec<Seg>,
    ) -> Result<Node, Problem> {
        let pos = pos_of(&span);
        if depth > self.limits.max_depth {
            return Err(self.too_deep(pos, path));
        }
        match ev {
            Event::Alias(id) => self.alias(id, pos, depth, path),
            Event::Scalar(v, style, anchor, tag) => {
                self.begin(tag.as_deref(), pos, path)?;
                let forced_str = tag
                    .as_deref()
                    .is_some_and(|t| t.is_yaml_core_schema_tag("str"));
                let kind = Kind::Scalar {
                    text: v.into_owned(),
                    plain: style == ScalarStyle::Plain && !forced_str,
                };
                self.finish(kind, pos, anchor, path)
            }
            Event::SequenceStart(_, anchor, tag) => {
                self.begin(tag.as_deref(), pos, path)?;
                let items = self.sequence_items(depth, path)?;
                self.finish(Kind::Seq(items), pos, anchor, path)
            }
            Event::MappingStart(_, anchor, tag) => {
                self.begin(tag.as_deref(), pos, path)?;
                let entries = self.mapping_entries(depth, path)?;
                self.finish(Kind::Map(entries), pos, anchor, path)
            }
            _ => Err(problem(pos, path, "expected a value")),
        }
    }

    /// A copy of the node an alias names (within the budget of aliases).
    fn alias(&mut self, id: usize, pos: Pos, depth: usize, path: &[Seg]) -> Result<Node, Problem> {
        self.aliases += 1;
        if self.aliases > self.limits.max_aliases {
            return Err(problem(
                pos,
                path,
                format!(
                    "expected at most {} aliases (`*name`), found more",
                    self.limits.max_aliases
                ),
            ));
        }
        let Some(target) = self.anchors.get(&id).cloned() else {
            return Err(problem(
                pos,
                path,
                "this alias names no anchor defined before it",
            ));
        };
        self.refresh(&target, depth, path)
    }

    /// The start of a node: count it, check its tag.
    fn begin(&mut self, tag: Option<&Tag>, pos: Pos, path: &[Seg]) -> Result<(), Problem> {
        self.count(1, pos, path)?;
        self.check_tag(tag, pos, path);
        Ok(())
    }

    /// The node, once its content is read (so that children have lower ids), under its anchor.
    fn finish(
        &mut self,
        kind: Kind,
        pos: Pos,
        anchor: usize,
        path: &[Seg],
    ) -> Result<Node, Problem> {
        let n = Node {
            id: self.id(),
            pos,
            kind,
        };
        self.anchor(anchor, &n, path)?;
        Ok(n)
    }

    /// The items of a sequence, up to its end.
    fn sequence_items(&mut self, depth: usize, path: &mut Vec<Seg>) -> Result<Vec<Node>, Problem> {
        let mut items = Vec::new();
        loop {
            let (ev, span) = self.next(path)?;
            if matches!(ev, Event::SequenceEnd) {
                break;
            }
            path.push(Seg::Index(items.len()));
            let item = self.node(ev, span, depth + 1, path)?;
            path.pop();
            items.push(item);
        }
        Ok(items)
    }

    /// The entries of a mapping, up to its end, merge keys (`<<`) applied. A key given twice
    /// is a problem; its first value is kept.
    fn mapping_entries(
        &mut self,
        depth: usize,
        path: &mut Vec<Seg>,
    ) -> Result<Vec<Entry>, Problem> {
        let mut entries: Vec<Entry> = Vec::new();
        let mut merges = Vec::new();
        loop {
            let (ev, span) = self.next(path)?;
            if matches!(ev, Event::MappingEnd) {
                break;
            }
            let key_pos = pos_of(&span);
            let (key, plain) = self.key(ev, span, depth, path)?;
            path.push(Seg::Key(key.clone()));
            let (ev, span) = self.next(path)?;
            let value = self.node(ev, span, depth + 1, path)?;
            if key == "<<" && plain {
                merges.push((key_pos, value));
            } else if let Some(first) = entries.iter().find(|e| e.key == key) {
                let message = format!(
                    "duplicate key `{key}` (it is already set at line {}); keep one",
                    first.key_pos.line
                );
                self.problems.push(problem(key_pos, path, message));
            } else {
                entries.push(Entry {
                    key,
                    key_pos,
                    value,
                });
            }
            path.pop();
        }
        self.merge(&mut entries, merges, path);
        Ok(entries)
    }

    /// A mapping key: its text, and whether it is plain (`<<` merges only when plain).
    fn key(
        &mut self,
        ev: Event<'a>,
        span: Span,
        depth: usize,
        path: &mut Vec<Seg>,
    ) -> Result<(String, bool), Problem> {
        let key_pos = pos_of(&span);
        match self.node(ev, span, depth + 1, path)?.kind {
            Kind::Scalar { text, plain } => Ok((text, plain)),
            _ => Err(problem(
                key_pos,
                path,
                "expected a key (a word or a string), found a list or a mapping used as a key",
            )),
        }
    }

    /// Add the entries of merged mappings (`<<: *base`, `<<: [*a, *b]`) that the mapping does
    /// not set itself; the first merged mapping that sets a key wins.
    fn merge(&mut self, entries: &mut Vec<Entry>, merges: Vec<(Pos, Node)>, path: &[Seg]) {
        for (key_pos, m) in merges {
            let maps = match m.kind {
                Kind::Map(_) => vec![m],
                Kind::Seq(items) if items.iter().all(|i| matches!(i.kind, Kind::Map(_))) => items,
                _ => {
                    self.problems.push(problem(
                        key_pos,
                        path,
                        "expected a mapping or a list of mappings after the merge key `<<`",
                    ));
                    continue;
                }
            };
            for map in maps {
                if let Kind::Map(es) = map.kind {
                    for e in es {
                        if !entries.iter().any(|x| x.key == e.key) {
                            entries.push(e);
                        }
                    }
                }
            }
        }
    }
}

/// A problem at `pos`, inside the value at `path`.
fn problem(pos: Pos, path: &[Seg], message: impl Into<String>) -> Problem {
    Problem {
        pos,
        path: path.to_vec(),
        message: message.into(),
    }
}

/// The parser's message, with what is expected when it is about indentation.
fn explain_syntax(info: &str, src: &str, pos: Pos) -> String {
    let line = src
        .lines()
        .nth(pos.line.saturating_sub(1) as usize)
        .unwrap_or("");
    let lower = info.to_lowercase();
    let indentation = lower.contains("indent")
        || lower.contains("mapping values are not allowed")
        || lower.contains("did not find expected key")
        || lower.contains("block mapping")
        || lower.contains("block sequence");
    if indentation {
        let indent = |l: &str| l.len() - l.trim_start().len();
        let above = src
            .lines()
            .take(pos.line.saturating_sub(1) as usize)
            .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .last()
            .map(indent);
        let here = indent(line);
        match above {
            Some(a) if a != here => format!(
                "invalid YAML ({info}): expected the keys of one mapping to start in the same column; this line is indented by {here} space(s), the line above by {a}"
            ),
            _ => format!(
                "invalid YAML ({info}): expected the keys of one mapping to start in the same column; this line is indented by {here} space(s)"
            ),
        }
    } else {
        format!("invalid YAML: {info}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_depth: 32,
            max_nodes: 1000,
            max_aliases: 10,
            max_anchors: 10,
        }
    }

    fn render(n: &Node) -> String {
        match &n.kind {
            Kind::Scalar { text, plain } => {
                if *plain {
                    text.clone()
                } else {
                    format!("{text:?}")
                }
            }
            Kind::Seq(items) => format!(
                "[{}]",
                items.iter().map(render).collect::<Vec<_>>().join(", ")
            ),
            Kind::Map(es) => format!(
                "{{{}}}",
                es.iter()
                    .map(|e| format!("{}: {}", e.key, render(&e.value)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    #[test]
    fn builds_positions_aliases_and_merges() {
        let t = parse(
            "# c\na: &x {p: 1, q: '2'}\nb:\n  <<: *x\n  q: 3\nc: [*x]\n",
            &limits(),
        )
        .unwrap();
        assert_eq!(
            render(&t.root),
            "{a: {p: 1, q: \"2\"}, b: {q: 3, p: 1}, c: [{p: 1, q: \"2\"}]}"
        );
        let q = t
            .get(&[Seg::Key("b".into()), Seg::Key("q".into())])
            .unwrap();
        assert_eq!(q.pos, Pos { line: 5, col: 6 });
        assert!(t.problems.is_empty());
        // a copy made by an alias has its own ids
        let a = t.get(&[Seg::Key("a".into())]).unwrap();
        let c0 = t.get(&[Seg::Key("c".into()), Seg::Index(0)]).unwrap();
        assert_ne!(a.id, c0.id);
    }

    #[test]
    fn duplicate_keys_are_problems_not_failures() {
        let t = parse("a: 1\nb: 2\na: 3\n", &limits()).unwrap();
        assert_eq!(t.problems.len(), 1);
        assert_eq!(t.problems[0].pos.line, 3);
        assert!(t.problems[0].message.contains("duplicate key `a`"));
        assert_eq!(render(&t.root), "{a: 1, b: 2}");
    }

    #[test]
    fn syntax_errors_have_the_enclosing_path() {
        let e = parse("a:\n  b:\n    - x\n    - [y\n", &limits())
            .err()
            .unwrap();
        assert!(render_path(&e.path).starts_with("a.b"), "{e:?}");
        assert!(e.message.starts_with("invalid YAML"), "{}", e.message);
        let e = parse("a: 1\n---\nb: 2\n", &limits()).err().unwrap();
        assert!(e.message.contains("second"), "{}", e.message);
    }

    #[test]
    fn budgets_are_enforced() {
        let deep = format!("{}{}", "[".repeat(40), "]".repeat(40));
        assert!(
            parse(&deep, &limits())
                .err()
                .unwrap()
                .message
                .contains("nesting")
        );
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..6 {
            let p = i - 1;
            bomb.push_str(&format!("a{i}: &a{i} [*a{p}, *a{p}, *a{p}]\n"));
        }
        assert!(parse(&bomb, &limits()).is_err());
    }

    use crate::locate::render_path;
}
