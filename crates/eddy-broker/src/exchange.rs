//! Exchanges, bindings and routing (direct, fanout, topic, headers).

use amq_protocol::types::{AMQPValue, FieldTable};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::error::{BrokerError, Result};

/// The exchange types RabbitMQ clients use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeKind {
    /// Exact routing-key match.
    Direct,
    /// Every bound destination.
    Fanout,
    /// Dot-separated words with `*` (one word) and `#` (zero or more words).
    Topic,
    /// Header match with `x-match` all/any.
    Headers,
}

impl ExchangeKind {
    /// Parse an exchange type name.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "direct" => Ok(ExchangeKind::Direct),
            "fanout" => Ok(ExchangeKind::Fanout),
            "topic" => Ok(ExchangeKind::Topic),
            "headers" => Ok(ExchangeKind::Headers),
            // as current RabbitMQ: 406 on the channel, naming the type
            other => Err(BrokerError::PreconditionFailed(format!(
                "invalid exchange type '{other}'"
            ))),
        }
    }

    /// The type's name.
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }
}

/// Where a binding leads.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Destination {
    /// A queue by name.
    Queue(String),
    /// An exchange by name (exchange-to-exchange binding).
    Exchange(String),
}

/// A binding from an exchange to a destination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Binding {
    /// Destination.
    pub destination: Destination,
    /// Binding key.
    pub routing_key: String,
    /// Binding arguments (headers exchanges match on these).
    pub arguments: FieldTable,
}

/// An exchange.
#[derive(Debug)]
pub struct Exchange {
    /// Name (empty for the default exchange).
    pub name: String,
    /// Type.
    pub kind: ExchangeKind,
    /// Survives restart.
    pub durable: bool,
    /// Deleted when its last binding (as source) goes.
    pub auto_delete: bool,
    /// Cannot be published to by clients.
    pub internal: bool,
    /// Declare arguments.
    pub arguments: FieldTable,
    bindings: RwLock<Vec<Binding>>,
}

impl Exchange {
    /// A new exchange with no bindings.
    pub fn new(
        name: impl Into<String>,
        kind: ExchangeKind,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
    ) -> Self {
        Exchange {
            name: name.into(),
            kind,
            durable,
            auto_delete,
            internal,
            arguments,
            bindings: RwLock::new(Vec::new()),
        }
    }

    /// The `alternate-exchange` argument, if set.
    pub fn alternate_exchange(&self) -> Option<String> {
        match self.arguments.inner().get("alternate-exchange") {
            Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into()),
            Some(AMQPValue::ShortString(s)) => Some(s.as_str().to_owned()),
            _ => None,
        }
    }

    /// Refuse binding arguments this exchange cannot use (RabbitMQ: an invalid `x-match` on a
    /// headers exchange is a precondition failure).
    pub fn check_binding_arguments(&self, arguments: &FieldTable) -> Result<()> {
        if self.kind != ExchangeKind::Headers {
            return Ok(());
        }
        match arguments.inner().get("x-match") {
            None => Ok(()),
            Some(v) => match crate::args::value_as_string(v).as_deref() {
                Some("all" | "any" | "all-with-x" | "any-with-x") => Ok(()),
                _ => Err(BrokerError::PreconditionFailed(format!(
                    "invalid x-match field value {v:?}; expected one of all, any, all-with-x, any-with-x"
                ))),
            },
        }
    }

    /// Add a binding; false when an identical one exists.
    pub fn bind(&self, b: Binding) -> bool {
        let mut bs = self.bindings.write();
        if bs.contains(&b) {
            return false;
        }
        bs.push(b);
        true
    }

    /// Remove a binding; false when it did not exist.
    pub fn unbind(&self, b: &Binding) -> bool {
        let mut bs = self.bindings.write();
        let before = bs.len();
        bs.retain(|x| x != b);
        bs.len() != before
    }

    /// Remove every binding to `dest`.
    pub fn unbind_destination(&self, dest: &Destination) -> usize {
        let mut bs = self.bindings.write();
        let before = bs.len();
        bs.retain(|x| &x.destination != dest);
        before - bs.len()
    }

    /// A snapshot of the bindings.
    pub fn bindings(&self) -> Vec<Binding> {
        self.bindings.read().clone()
    }

    /// Number of bindings.
    pub fn binding_count(&self) -> usize {
        self.bindings.read().len()
    }

    /// Destinations matching a routing key and headers, appended to `out`.
    pub fn route(
        &self,
        routing_key: &str,
        headers: Option<&FieldTable>,
        out: &mut Vec<Destination>,
    ) {
        let bs = self.bindings.read();
        let mut topic = (self.kind == ExchangeKind::Topic).then(|| TopicMatcher::new(routing_key));
        for b in bs.iter() {
            let hit = match (self.kind, topic.as_mut()) {
                (ExchangeKind::Direct, _) => b.routing_key == routing_key,
                (ExchangeKind::Fanout, _) => true,
                (ExchangeKind::Topic, Some(m)) => m.matches(&b.routing_key),
                (ExchangeKind::Topic, None) => false,
                (ExchangeKind::Headers, _) => headers_match(&b.arguments, headers),
            };
            if hit && !out.contains(&b.destination) {
                out.push(b.destination.clone());
            }
        }
    }
}

/// Topic matching: words separated by `.`, `*` matches exactly one word, `#` zero or more.
/// An empty key or pattern is zero words (as RabbitMQ splits them). Runs in
/// O(pattern words × key words) whatever the pattern: a row of reachable key positions per
/// pattern word, so runs of `#` cannot make it backtrack.
pub fn topic_matches(pattern: &str, key: &str) -> bool {
    TopicMatcher::new(key).matches(pattern)
}

/// A routing key split once, matched against many binding patterns without allocating per
/// pattern.
struct TopicMatcher<'k> {
    key: Vec<&'k str>,
    reach: Vec<bool>,
    next: Vec<bool>,
}

impl<'k> TopicMatcher<'k> {
    fn new(key: &'k str) -> Self {
        let key: Vec<&str> = if key.is_empty() {
            Vec::new()
        } else {
            key.split('.').collect()
        };
        let n = key.len() + 1;
        TopicMatcher {
            key,
            reach: vec![false; n],
            next: vec![false; n],
        }
    }

    fn matches(&mut self, pattern: &str) -> bool {
        let k = &self.key;
        let (reach, next) = (&mut self.reach, &mut self.next);
        reach.iter_mut().for_each(|x| *x = false);
        // reach[j]: the pattern words so far match the first j key words
        reach[0] = true;
        let words = if pattern.is_empty() {
            None
        } else {
            Some(pattern.split('.'))
        };
        let mut prev_hash = false;
        for w in words.into_iter().flatten() {
            let hash = w == "#";
            if hash && prev_hash {
                continue; // "#.#" matches what "#" does
            }
            prev_hash = hash;
            next.iter_mut().for_each(|x| *x = false);
            if hash {
                let mut any = false;
                for j in 0..=k.len() {
                    any |= reach[j];
                    next[j] = any;
                }
            } else {
                for j in 0..k.len() {
                    if reach[j] && (w == "*" || w == k[j]) {
                        next[j + 1] = true;
                    }
                }
            }
            std::mem::swap(reach, next);
            if !reach.contains(&true) {
                return false;
            }
        }
        reach[k.len()]
    }
}

/// Headers matching per RabbitMQ: `x-match` = all (default) / any / all-with-x / any-with-x;
/// keys beginning `x-` are ignored unless the `-with-x` forms are used; a binding value of type
/// void matches on presence alone.
pub fn headers_match(binding: &FieldTable, headers: Option<&FieldTable>) -> bool {
    let mode = match binding.inner().get("x-match") {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Some(AMQPValue::ShortString(s)) => s.as_str().to_owned(),
        _ => "all".to_owned(),
    };
    let (any, with_x) = match mode.as_str() {
        "any" => (true, false),
        "any-with-x" => (true, true),
        "all-with-x" => (false, true),
        _ => (false, false),
    };
    let empty = FieldTable::default();
    let headers = headers.unwrap_or(&empty).inner();
    let mut considered = 0usize;
    let mut matched = 0usize;
    for (k, v) in binding.inner() {
        if k.as_str() == "x-match" || (!with_x && k.as_str().starts_with("x-")) {
            continue;
        }
        considered += 1;
        let ok = match headers.get(k.as_str()) {
            Some(hv) => matches!(v, AMQPValue::Void) || values_equal(v, hv),
            None => false,
        };
        if ok {
            matched += 1;
        }
    }
    if any {
        matched > 0
    } else {
        matched == considered
    }
}

fn values_equal(a: &AMQPValue, b: &AMQPValue) -> bool {
    use AMQPValue::*;
    match (a, b) {
        (LongString(x), ShortString(y)) | (ShortString(y), LongString(x)) => {
            x.as_bytes() == y.as_str().as_bytes()
        }
        _ => {
            if let (Some(x), Some(y)) = (as_i128(a), as_i128(b)) {
                x == y
            } else {
                a == b
            }
        }
    }
}

fn as_i128(v: &AMQPValue) -> Option<i128> {
    use AMQPValue::*;
    Some(match v {
        ShortShortInt(x) => *x as i128,
        ShortShortUInt(x) => *x as i128,
        ShortInt(x) => *x as i128,
        ShortUInt(x) => *x as i128,
        LongInt(x) => *x as i128,
        LongUInt(x) => *x as i128,
        LongLongInt(x) => *x as i128,
        Timestamp(x) => *x as i128,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::LongString;

    #[test]
    fn topic() {
        assert!(topic_matches("a.*.c", "a.b.c"));
        assert!(!topic_matches("a.*.c", "a.b.b.c"));
        assert!(topic_matches("a.#", "a"));
        assert!(topic_matches("a.#", "a.b.c"));
        assert!(topic_matches("#", "anything.at.all"));
        assert!(topic_matches("#.c", "a.b.c"));
        assert!(topic_matches("*.b.#", "a.b"));
        assert!(!topic_matches("*", "a.b"));
        assert!(topic_matches("#", ""));
        assert!(!topic_matches("a", ""));
        assert!(topic_matches("a.#.#.b", "a.b"));
        assert!(topic_matches("", ""));
        assert!(!topic_matches("*", ""));
        assert!(topic_matches("#.#", ""));
        assert!(topic_matches("a..b", "a..b"));
        assert!(topic_matches("*.*", "a."));
        assert!(topic_matches("#.a.#", "b.a.c"));
        assert!(!topic_matches("#.a.#", "b.c"));
        assert!(topic_matches("0.1.#", "0.1"));
        assert!(!topic_matches("0.1.*", "0.1"));
    }

    #[test]
    fn topic_with_many_hashes_is_fast() {
        // backtracking matchers take exponential time here; this must be instant
        let pattern = vec!["#"; 40].join(".") + ".z";
        let key = vec!["a"; 200].join(".");
        let t = std::time::Instant::now();
        assert!(!topic_matches(&pattern, &key));
        let pattern = vec!["#.x"; 30].join(".");
        assert!(!topic_matches(&pattern, &key));
        assert!(
            t.elapsed() < std::time::Duration::from_secs(1),
            "{:?}",
            t.elapsed()
        );
    }

    /// The matcher agrees with a plain recursive definition on every small case.
    #[test]
    fn topic_matches_reference() {
        fn reference(p: &[&str], k: &[&str]) -> bool {
            match p.split_first() {
                None => k.is_empty(),
                Some((&"#", rest)) => (0..=k.len()).any(|i| reference(rest, &k[i..])),
                Some((w, rest)) => match k.split_first() {
                    Some((kw, krest)) if *w == "*" || w == kw => reference(rest, krest),
                    _ => false,
                },
            }
        }
        let alphabet = ["a", "b", "*", "#"];
        let keys = ["", "a", "b", "a.b", "b.a", "a.a.b", "a.b.a.b", "b.b.b"];
        let mut patterns = vec![String::new()];
        for len in 1..=4u32 {
            for n in 0..alphabet.len().pow(len) {
                let mut words = Vec::new();
                let mut m = n;
                for _ in 0..len {
                    words.push(alphabet[m % alphabet.len()]);
                    m /= alphabet.len();
                }
                patterns.push(words.join("."));
            }
        }
        let split = |s: &'static str| -> Vec<&'static str> {
            if s.is_empty() {
                vec![]
            } else {
                s.split('.').collect()
            }
        };
        for p in &patterns {
            let pw: Vec<&str> = if p.is_empty() {
                vec![]
            } else {
                p.split('.').collect()
            };
            for k in keys {
                assert_eq!(
                    topic_matches(p, k),
                    reference(&pw, &split(k)),
                    "pattern {p:?} key {k:?}"
                );
            }
        }
    }

    #[test]
    fn headers() {
        let mut b = FieldTable::default();
        b.insert(
            "x-match".into(),
            AMQPValue::LongString(LongString::from("any")),
        );
        b.insert("a".into(), AMQPValue::LongString(LongString::from("1")));
        b.insert("b".into(), AMQPValue::LongInt(2));
        let mut h = FieldTable::default();
        h.insert("b".into(), AMQPValue::ShortShortInt(2));
        assert!(headers_match(&b, Some(&h)));
        b.insert(
            "x-match".into(),
            AMQPValue::LongString(LongString::from("all")),
        );
        assert!(!headers_match(&b, Some(&h)));
        h.insert("a".into(), AMQPValue::ShortString("1".into()));
        assert!(headers_match(&b, Some(&h)));
        assert!(!headers_match(&b, None));
    }
}
