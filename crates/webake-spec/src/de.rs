//! Deserialize the recipe types from a YAML tree, reporting every error.
//!
//! serde stops at the first error. To report all of them, a failed pass records its error, drops
//! the value that failed (a list item, a mapping entry) and deserializes again; errors that only
//! follow from a dropped value (a required field now missing) are not reported. Unknown fields
//! do not stop a pass at all: they are recorded and skipped, with the closest known field.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};

use crate::locate::Seg;
use crate::suggest::{did_you_mean, list, unknown};
use crate::yaml::{Entry, Kind, Node, NodeId, Pos, Problem, Tree};

/// The result of deserializing a tree: the value (if the document could be read at all, with
/// the failed parts dropped), every problem found, and what was dropped.
pub struct Outcome<T> {
    pub value: Option<T>,
    pub problems: Vec<Problem>,
    pub dropped: HashSet<NodeId>,
}

/// Deserialize `T`, collecting up to `max` errors.
pub fn from_tree<T: DeserializeOwned>(tree: &Tree, max: usize) -> Outcome<T> {
    let index = tree.index();
    let mut dropped: HashSet<NodeId> = HashSet::new();
    let mut subst: HashMap<NodeId, Node> = HashMap::new();
    let mut extra: HashMap<NodeId, Vec<(String, Node)>> = HashMap::new();
    let mut filled: HashSet<(NodeId, String)> = HashSet::new();
    let mut next_id = usize::MAX;
    let mut hard = Vec::new();
    let mut soft: BTreeMap<NodeId, Problem> = BTreeMap::new();
    // Every pass drops or fills in one value, so the passes are bounded by the values; the
    // cap is a backstop.
    let mut passes = 0;
    let value = loop {
        passes += 1;
        let ctx = Ctx {
            dropped: &dropped,
            subst: &subst,
            extra: &extra,
            soft: RefCell::new(Vec::new()),
        };
        let r = T::deserialize(De {
            node: &tree.root,
            path: Vec::new(),
            ctx: &ctx,
        });
        for (id, p) in ctx.soft.into_inner() {
            soft.entry(id).or_insert(p);
        }
        let e = match r {
            Ok(v) => break Some(v),
            Err(e) => e,
        };
        let at = e.at.unwrap_or_else(|| At {
            node: tree.root.id,
            pos: tree.root.pos,
            path: Vec::new(),
        });
        // A missing field whose value was dropped after its own error is no news.
        let (dropped_entry, message, path) = match &e.missing {
            Some(f) => {
                let d = index
                    .get(&at.node)
                    .and_then(|n| n.entry(f))
                    .filter(|en| dropped.contains(&en.value.id))
                    .map(|en| en.value.id);
                let mut path = at.path.clone();
                path.push(Seg::Key(f.clone()));
                (
                    d,
                    format!("{}{}", e.message, missing_hint(&at.path, f)),
                    path,
                )
            }
            None => (None, e.message, at.path.clone()),
        };
        if dropped_entry.is_none() {
            hard.push(Problem {
                pos: at.pos,
                path,
                message,
            });
        }
        if hard.len() + soft.len() >= max || passes > 10 * max {
            break None;
        }
        // A required field that failed or is missing: fill in a stand-in (its error is
        // reported) so that the rest of the recipe can still be checked.
        if let Some(f) = &e.missing
            && let Some(mut stand_in) = placeholder(&at.path, f)
            && filled.insert((at.node, f.clone()))
        {
            next_id -= 1;
            stand_in.id = next_id;
            match dropped_entry {
                Some(id) => {
                    dropped.remove(&id);
                    stand_in.pos = index.get(&id).map_or(at.pos, |n| n.pos);
                    subst.insert(id, stand_in);
                }
                None => {
                    stand_in.pos = at.pos;
                    extra
                        .entry(at.node)
                        .or_default()
                        .push((f.clone(), stand_in));
                }
            }
            continue;
        }
        if at.node == tree.root.id {
            break None;
        }
        dropped.insert(at.node);
    };
    let mut problems: Vec<Problem> = hard;
    problems.extend(soft.into_values());
    Outcome {
        value,
        problems,
        dropped,
    }
}

/// A stand-in for a required field that failed or is missing. It never reaches a caller:
/// the recipe has an error at that field.
fn placeholder(map: &[Seg], field: &str) -> Option<Node> {
    let keys: Vec<&str> = map
        .iter()
        .map(|s| match s {
            Seg::Key(k) => k.as_str(),
            Seg::Index(_) => "[]",
        })
        .collect();
    let node = |kind| Node {
        id: 0,
        pos: Pos::START,
        kind,
    };
    let scalar = |t: &str| {
        node(Kind::Scalar {
            text: t.to_string(),
            plain: true,
        })
    };
    let map1 = |k: &str, v: Node| {
        node(Kind::Map(vec![Entry {
            key: k.into(),
            key_pos: Pos::START,
            value: v,
        }]))
    };
    Some(match (keys.as_slice(), field) {
        ([], "version") => scalar("1"),
        ([], "image") => map1("name", scalar("image")),
        ([], "base") => map1("image", scalar("image")),
        (["image"], "name") => scalar("image"),
        (["base", "mmdebstrap"], "suite") => scalar("bookworm"),
        (["base", "ami"], "id") => scalar("ami-0"),
        (["base", "ami"], "region") => scalar("region"),
        (["variables", _], "type") => scalar("string"),
        (["provisioners", "[]", "file"], "source") => scalar("source"),
        (["provisioners", "[]", "file"], "destination") => scalar("/destination"),
        (["provisioners", "[]", "ansible-local" | "ansible"], "playbook_file") => {
            scalar("playbook.yml")
        }
        (["test", "checks", "[]"], "name" | "run") => scalar("true"),
        _ => return None,
    })
}

struct Ctx<'t> {
    dropped: &'t HashSet<NodeId>,
    /// Stand-ins for values that failed, by the failed value's id.
    subst: &'t HashMap<NodeId, Node>,
    /// Stand-ins for missing fields, by the id of their mapping.
    extra: &'t HashMap<NodeId, Vec<(String, Node)>>,
    /// Unknown fields, by the id of the mapping value they hold (reported once).
    soft: RefCell<Vec<(NodeId, Problem)>>,
}

#[derive(Debug, Clone)]
pub struct At {
    node: NodeId,
    pos: Pos,
    path: Vec<Seg>,
}

#[derive(Debug)]
pub struct DeError {
    message: String,
    at: Option<At>,
    missing: Option<String>,
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        let mut message = msg.to_string();
        if message.starts_with("data did not match any variant of untagged enum OneOrMany") {
            message = "expected one value or a list of values".into();
        }
        Self {
            message,
            at: None,
            missing: None,
        }
    }

    fn invalid_type(unexp: de::Unexpected, exp: &dyn de::Expected) -> Self {
        Self::custom(format!("expected {exp}, found {}", unexpected(&unexp)))
    }

    fn invalid_value(unexp: de::Unexpected, exp: &dyn de::Expected) -> Self {
        Self::custom(format!("expected {exp}, found {}", unexpected(&unexp)))
    }

    fn invalid_length(len: usize, exp: &dyn de::Expected) -> Self {
        Self::custom(format!("expected {exp}, found {len} item(s)"))
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        Self::custom(unknown("value", variant, expected.iter().copied()))
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        Self::custom(unknown_field_message(field, expected))
    }

    fn missing_field(field: &'static str) -> Self {
        Self {
            message: format!("missing field `{field}`"),
            at: None,
            missing: Some(field.to_string()),
        }
    }
}

fn unknown_field_message(field: &str, expected: &[&str]) -> String {
    let dym = did_you_mean(field, expected.iter().copied());
    if dym.is_empty() {
        format!(
            "unknown field `{field}`; expected one of {}",
            list(expected.iter().copied())
        )
    } else {
        format!("unknown field `{field}`{dym}")
    }
}

fn quote(s: &str) -> String {
    const MAX: usize = 60;
    if s.chars().count() > MAX {
        let cut: String = s.chars().take(MAX).collect();
        format!("{cut:?}…")
    } else {
        format!("{s:?}")
    }
}

fn unexpected(u: &de::Unexpected) -> String {
    use de::Unexpected as U;
    match u {
        U::Bool(b) => format!("`{b}`"),
        U::Unsigned(n) => format!("the number {n}"),
        U::Signed(n) => format!("the number {n}"),
        U::Float(n) => format!("the number {n}"),
        U::Char(c) => format!("the character {c:?}"),
        U::Str(s) => format!("the string {}", quote(s)),
        U::Unit | U::Option => "nothing (an empty value)".into(),
        U::Seq => "a list".into(),
        U::Map => "a mapping".into(),
        other => other.to_string(),
    }
}

/// What a plain scalar means (YAML 1.2 core schema, booleans only `true`/`false`).
enum Scalar<'a> {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(&'a str),
}

fn resolve(text: &str, plain: bool) -> Scalar<'_> {
    if !plain {
        return Scalar::Str(text);
    }
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Scalar::Null,
        "true" => return Scalar::Bool(true),
        "false" => return Scalar::Bool(false),
        ".inf" | "+.inf" | ".Inf" | ".INF" => return Scalar::Float(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => return Scalar::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Scalar::Float(f64::NAN),
        _ => {}
    }
    if let Some(n) = parse_int(text) {
        return Scalar::Int(n);
    }
    if is_float(text)
        && let Ok(f) = text.parse::<f64>()
    {
        return Scalar::Float(f);
    }
    Scalar::Str(text)
}

fn parse_int(t: &str) -> Option<i128> {
    if let Some(h) = t.strip_prefix("0x") {
        return i128::from_str_radix(h, 16).ok();
    }
    if let Some(o) = t.strip_prefix("0o") {
        return i128::from_str_radix(o, 8).ok();
    }
    let digits = t.strip_prefix(['-', '+']).unwrap_or(t);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse().ok()
}

fn is_float(t: &str) -> bool {
    let t = t.strip_prefix(['-', '+']).unwrap_or(t);
    let (mantissa, exp) = match t.find(['e', 'E']) {
        Some(i) => (&t[..i], Some(&t[i + 1..])),
        None => (t, None),
    };
    let (int, frac) = match mantissa.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (mantissa, None),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match frac {
        Some(f) => digits(int) && digits(f) && !(int.is_empty() && f.is_empty()),
        None => !int.is_empty() && digits(int),
    };
    let exp_ok = exp.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && digits(e)
    });
    mantissa_ok && exp_ok
}

/// What a value is, for "found ..." in messages.
fn found(n: &Node) -> String {
    match &n.kind {
        Kind::Scalar { text, plain } => match resolve(text, *plain) {
            Scalar::Null => "nothing (an empty value)".into(),
            Scalar::Bool(b) => format!("`{b}`"),
            Scalar::Int(_) | Scalar::Float(_) => format!("the number {text}"),
            Scalar::Str(s) => format!("the string {}", quote(s)),
        },
        Kind::Seq(_) => "a list".into(),
        Kind::Map(_) => "a mapping".into(),
    }
}

/// What a field expects when its type alone would say too little.
fn expectation(path: &[Seg], default: &str) -> String {
    let keys: Vec<&str> = path
        .iter()
        .map(|s| match s {
            Seg::Key(k) => k.as_str(),
            Seg::Index(_) => "[]",
        })
        .collect();
    match keys.as_slice() {
        ["version"] => "the recipe format version, the number 1".into(),
        ["variables", _, "default"] => "a string, a number or true/false".into(),
        ["test", "timeout_secs"] => "a whole number of seconds".into(),
        ["test", "memory_mib"] => "a whole number of MiB".into(),
        _ => default.to_string(),
    }
}

/// What a required field is for, after "missing field `x`".
fn missing_hint(map: &[Seg], field: &str) -> &'static str {
    let keys: Vec<&str> = map
        .iter()
        .map(|s| match s {
            Seg::Key(k) => k.as_str(),
            Seg::Index(_) => "[]",
        })
        .collect();
    match (keys.as_slice(), field) {
        ([], "version") => ": expected the recipe format version, `version: 1`",
        ([], "image") => ": expected the image, at least `image: {name: NAME}`",
        ([], "base") => {
            ": expected where the root filesystem comes from, e.g. `base: {mmdebstrap: {suite: bookworm}}`"
        }
        (["image"], "name") => ": expected the image name, e.g. `name: debian-minimal`",
        (["base", "mmdebstrap"], "suite") => ": expected a suite, e.g. `suite: bookworm`",
        (["variables", _], "type") => ": expected the variable's type: string, number or bool",
        (["provisioners", "[]", "file"], "source") => {
            ": expected the file or directory to copy, relative to the recipe"
        }
        (["provisioners", "[]", "file"], "destination") => {
            ": expected the absolute path to copy to, inside the image"
        }
        (["provisioners", "[]", "ansible-local" | "ansible"], "playbook_file") => {
            ": expected a playbook (or a list of them), relative to the recipe"
        }
        _ => "",
    }
}

fn enum_noun(name: &str) -> &'static str {
    match name {
        "Provisioner" => "step kind",
        "Base" => "base",
        "OutputFormat" => "output format",
        "BootMode" => "boot mode",
        "Filesystem" => "filesystem",
        "VarType" => "variable type",
        _ => "value",
    }
}

struct De<'n, 't> {
    node: &'n Node,
    path: Vec<Seg>,
    ctx: &'n Ctx<'t>,
}

impl<'n, 't> De<'n, 't> {
    fn at(&self, pos: Pos) -> At {
        At {
            node: self.node.id,
            pos,
            path: self.path.clone(),
        }
    }

    fn fail(&self, message: String) -> DeError {
        DeError {
            message,
            at: Some(self.at(self.node.pos)),
            missing: None,
        }
    }

    fn expected(&self, what: &str) -> DeError {
        self.fail(format!(
            "expected {}, found {}",
            expectation(&self.path, what),
            found(self.node)
        ))
    }

    /// Errors from below carry their own place; errors raised here get this node's.
    fn tag<T>(&self, r: Result<T, DeError>) -> Result<T, DeError> {
        r.map_err(|mut e| {
            if e.at.is_none() {
                e.at = Some(self.at(self.node.pos));
            }
            e
        })
    }

    /// Deserialize `seed` from this node; errors a `Deserialize` impl raises after reading
    /// the value (a bad size, a bad template) are this node's.
    fn seed<'de, S: DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, DeError> {
        let at = self.at(self.node.pos);
        seed.deserialize(self).map_err(|mut e| {
            if e.at.is_none() {
                e.at = Some(at);
            }
            e
        })
    }

    fn child(&self, node: &'n Node, seg: Seg) -> De<'n, 't> {
        let mut path = self.path.clone();
        path.push(seg);
        De {
            node,
            path,
            ctx: self.ctx,
        }
    }

    fn int(&self, min: i128, max: i128) -> Result<i128, DeError> {
        match &self.node.kind {
            Kind::Scalar { text, plain } => match resolve(text, *plain) {
                Scalar::Int(n) if n >= min && n <= max => Ok(n),
                Scalar::Int(_) => Err(self.fail(format!(
                    "expected {}, found the number {text}",
                    expectation(&self.path, &format!("a whole number from {min} to {max}"))
                ))),
                _ => Err(self.expected("a whole number")),
            },
            _ => Err(self.expected("a whole number")),
        }
    }

    fn items(&self) -> Vec<(usize, &'n Node)> {
        match &self.node.kind {
            Kind::Seq(items) => items
                .iter()
                .enumerate()
                .filter(|(_, n)| !self.ctx.dropped.contains(&n.id))
                .map(|(i, n)| (i, self.ctx.subst.get(&n.id).unwrap_or(n)))
                .collect(),
            _ => Vec::new(),
        }
    }

    fn entries(&self) -> Vec<(&'n str, Pos, &'n Node)> {
        let mut out: Vec<(&'n str, Pos, &'n Node)> = match &self.node.kind {
            Kind::Map(es) => es
                .iter()
                .filter(|e| !self.ctx.dropped.contains(&e.value.id))
                .map(|e| {
                    let v = self.ctx.subst.get(&e.value.id).unwrap_or(&e.value);
                    (e.key.as_str(), e.key_pos, v)
                })
                .collect(),
            _ => Vec::new(),
        };
        if let Some(extra) = self.ctx.extra.get(&self.node.id) {
            out.extend(extra.iter().map(|(k, n)| (k.as_str(), n.pos, n)));
        }
        out
    }
}

macro_rules! ints {
    ($($method:ident $visit:ident $t:ty),*) => {$(
        fn $method<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
            let n = self.int(<$t>::MIN as i128, <$t>::MAX as i128)?;
            self.tag(v.$visit(n as $t))
        }
    )*};
}

impl<'de> de::Deserializer<'de> for De<'_, '_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        let r = match &self.node.kind {
            Kind::Scalar { text, plain } => match resolve(text, *plain) {
                Scalar::Null => v.visit_unit(),
                Scalar::Bool(b) => v.visit_bool(b),
                Scalar::Int(n) => match (u64::try_from(n), i64::try_from(n)) {
                    (Ok(u), _) => v.visit_u64(u),
                    (_, Ok(i)) => v.visit_i64(i),
                    _ => v.visit_str(text),
                },
                Scalar::Float(f) => v.visit_f64(f),
                Scalar::Str(s) => v.visit_str(s),
            },
            Kind::Seq(_) => v.visit_seq(SeqAcc {
                items: self.items().into_iter(),
                de: &self,
            }),
            Kind::Map(_) => v.visit_map(MapAcc {
                entries: self.entries().into_iter(),
                value: None,
                de: &self,
            }),
        };
        self.tag(r)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match &self.node.kind {
            Kind::Scalar { text, plain } => match resolve(text, *plain) {
                Scalar::Bool(b) => self.tag(v.visit_bool(b)),
                _ => Err(self.expected("true or false")),
            },
            _ => Err(self.expected("true or false")),
        }
    }

    ints! {
        deserialize_u8 visit_u8 u8, deserialize_u16 visit_u16 u16,
        deserialize_u32 visit_u32 u32, deserialize_u64 visit_u64 u64,
        deserialize_i8 visit_i8 i8, deserialize_i16 visit_i16 i16,
        deserialize_i32 visit_i32 i32, deserialize_i64 visit_i64 i64
    }

    fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match &self.node.kind {
            Kind::Scalar { text, plain } => match resolve(text, *plain) {
                Scalar::Int(n) => self.tag(v.visit_f64(n as f64)),
                Scalar::Float(f) => self.tag(v.visit_f64(f)),
                _ => Err(self.expected("a number")),
            },
            _ => Err(self.expected("a number")),
        }
    }

    fn deserialize_f32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_f64(v)
    }

    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match &self.node.kind {
            Kind::Scalar { text, .. } if !self.node.is_null() => self.tag(v.visit_str(text)),
            _ => Err(self.expected("a string")),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_char<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        if self.node.is_null() {
            self.tag(v.visit_none())
        } else {
            let at = self.at(self.node.pos);
            v.visit_some(self).map_err(|mut e| {
                if e.at.is_none() {
                    e.at = Some(at);
                }
                e
            })
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        if self.node.is_null() {
            self.tag(v.visit_unit())
        } else {
            Err(self.expected("nothing"))
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_unit(v)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, DeError> {
        let at = self.at(self.node.pos);
        v.visit_newtype_struct(self).map_err(|mut e| {
            if e.at.is_none() {
                e.at = Some(at);
            }
            e
        })
    }

    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match &self.node.kind {
            Kind::Seq(_) => {}
            _ if self.node.is_null() => {}
            Kind::Scalar { .. } => {
                return Err(self.fail(format!(
                    "expected a list, found {} (write `[{}]`, or one `- item` per line)",
                    found(self.node),
                    self.node.scalar().unwrap_or_default()
                )));
            }
            Kind::Map(_) => return Err(self.expected("a list")),
        }
        let r = v.visit_seq(SeqAcc {
            items: self.items().into_iter(),
            de: &self,
        });
        self.tag(r)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, v: V) -> Result<V::Value, DeError> {
        self.deserialize_seq(v)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: usize,
        v: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(v)
    }

    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        if !matches!(self.node.kind, Kind::Map(_)) && !self.node.is_null() {
            return Err(self.expected("a mapping"));
        }
        let r = v.visit_map(MapAcc {
            entries: self.entries().into_iter(),
            value: None,
            de: &self,
        });
        self.tag(r)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        if !matches!(self.node.kind, Kind::Map(_)) && !self.node.is_null() {
            return Err(self.expected(&format!(
                "a mapping with the fields {}",
                list(fields.iter().copied())
            )));
        }
        let mut known = Vec::new();
        for (k, pos, value) in self.entries() {
            if fields.contains(&k) {
                known.push((k, pos, value));
            } else {
                let mut path = self.path.clone();
                path.push(Seg::Key(k.to_string()));
                self.ctx.soft.borrow_mut().push((
                    value.id,
                    Problem {
                        pos,
                        path,
                        message: unknown_field_message(k, fields),
                    },
                ));
            }
        }
        let r = v.visit_map(MapAcc {
            entries: known.into_iter(),
            value: None,
            de: &self,
        });
        self.tag(r)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        let noun = enum_noun(name);
        let (variant, pos, value) = match &self.node.kind {
            Kind::Scalar { text, .. } if !self.node.is_null() => {
                (text.as_str(), self.node.pos, None)
            }
            Kind::Map(_) => {
                let es = self.entries();
                if es.len() != 1 {
                    return Err(self.fail(format!(
                        "expected exactly one {noun} ({}) as the only key, found {}",
                        list(variants.iter().copied()),
                        if es.is_empty() {
                            "an empty mapping".to_string()
                        } else {
                            format!("the keys {}", list(es.iter().map(|(k, _, _)| *k)))
                        }
                    )));
                }
                (es[0].0, es[0].1, Some(es[0].2))
            }
            _ => {
                return Err(
                    self.expected(&format!("one {noun} of {}", list(variants.iter().copied())))
                );
            }
        };
        if !variants.contains(&variant) {
            return Err(DeError {
                message: unknown(noun, variant, variants.iter().copied()),
                at: Some(self.at(pos)),
                missing: None,
            });
        }
        let r = v.visit_enum(EnumAcc {
            variant,
            value,
            de: &self,
        });
        self.tag(r)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_unit()
    }
}

struct SeqAcc<'a, 'n, 't> {
    items: std::vec::IntoIter<(usize, &'n Node)>,
    de: &'a De<'n, 't>,
}

impl<'de> de::SeqAccess<'de> for SeqAcc<'_, '_, '_> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        match self.items.next() {
            None => Ok(None),
            Some((i, n)) => self.de.child(n, Seg::Index(i)).seed(seed).map(Some),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct MapAcc<'a, 'n, 't> {
    entries: std::vec::IntoIter<(&'n str, Pos, &'n Node)>,
    value: Option<(&'n str, &'n Node)>,
    de: &'a De<'n, 't>,
}

impl<'de> de::MapAccess<'de> for MapAcc<'_, '_, '_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        match self.entries.next() {
            None => Ok(None),
            Some((k, _, n)) => {
                self.value = Some((k, n));
                seed.deserialize(k.into_deserializer()).map(Some)
            }
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let (k, n) = self
            .value
            .take()
            .expect("serde asks for a value after its key");
        self.de.child(n, Seg::Key(k.to_string())).seed(seed)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

struct EnumAcc<'a, 'n, 't> {
    variant: &'n str,
    value: Option<&'n Node>,
    de: &'a De<'n, 't>,
}

impl<'de, 'a, 'n, 't> de::EnumAccess<'de> for EnumAcc<'a, 'n, 't> {
    type Error = DeError;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), DeError> {
        let v = seed.deserialize(self.variant.into_deserializer())?;
        Ok((v, self))
    }
}

impl<'de> de::VariantAccess<'de> for EnumAcc<'_, '_, '_> {
    type Error = DeError;

    fn unit_variant(self) -> Result<(), DeError> {
        match self.value {
            None => Ok(()),
            Some(n) if n.is_null() => Ok(()),
            Some(n) => Err(self
                .de
                .child(n, Seg::Key(self.variant.into()))
                .fail(format!(
                    "expected nothing after `{}`, found {}",
                    self.variant,
                    found(n)
                ))),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, DeError> {
        match self.value {
            Some(n) => self.de.child(n, Seg::Key(self.variant.into())).seed(seed),
            None => Err(self.de.fail(format!(
                "expected `{}:` followed by its settings, found the word `{}` alone",
                self.variant, self.variant
            ))),
        }
    }

    fn tuple_variant<V: Visitor<'de>>(self, _: usize, v: V) -> Result<V::Value, DeError> {
        match self.value {
            Some(n) => de::Deserializer::deserialize_seq(
                self.de.child(n, Seg::Key(self.variant.into())),
                v,
            ),
            None => Err(self.de.expected("a list")),
        }
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        match self.value {
            Some(n) => de::Deserializer::deserialize_struct(
                self.de.child(n, Seg::Key(self.variant.into())),
                "",
                fields,
                v,
            ),
            None => Err(self.de.expected("a mapping")),
        }
    }
}
