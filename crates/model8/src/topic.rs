//! AMQP topic matching as RabbitMQ does it: the one matcher every crate uses (the broker
//! double in `amqp8`, the configuration checks in `config8`, the examples).
//!
//! A key is split on `.` into words; the empty key has no words (`""` is zero words,
//! `"a."` is the two words `a` and the empty word, `"."` two empty words). In a binding
//! key, `*` matches exactly one word (the empty word too) and `#` zero or more. These
//! are RabbitMQ's rules (`rabbit_exchange_type_topic`), checked against the real broker
//! by `crates/amqp8/tests/rabbit_topic.rs`.
//!
//! ```
//! use model8::topic::matches;
//!
//! assert!(matches("cptm8.*.get.scan", "cptm8.asmm8.get.scan"));
//! assert!(matches("cptm8.asmm8.#", "cptm8.asmm8"));
//! assert!(matches("#", ""));
//! assert!(!matches("*", ""));
//! assert!(matches("a.*", "a."));
//! ```

/// The words of a topic key or binding key: none for the empty key.
pub fn words(key: &str) -> Vec<&str> {
    if key.is_empty() {
        Vec::new()
    } else {
        key.split('.').collect()
    }
}

/// Whether the topic binding key `pattern` matches the routing key `key`. Linear in the
/// product of the word counts (no exponential backtracking on many `#`).
pub fn matches(pattern: &str, key: &str) -> bool {
    let (p, k) = (words(pattern), words(key));
    // row[j] for pattern words i..: p[i..] matches k[j..]; computed from the last word.
    let mut next = vec![false; k.len() + 1];
    next[k.len()] = true;
    for i in (0..p.len()).rev() {
        let mut row = vec![false; k.len() + 1];
        for j in (0..=k.len()).rev() {
            row[j] = match p[i] {
                "#" => next[j] || (j < k.len() && row[j + 1]),
                "*" => j < k.len() && next[j + 1],
                w => j < k.len() && k[j] == w && next[j + 1],
            };
        }
        next = row;
    }
    next[0]
}

/// Whether `routing_key` reaches a binding with `binding_key` on an exchange of `kind`
/// (`fanout`, `direct`, `topic`; `headers` and unknown kinds route on nothing here).
pub fn routes(kind: &str, binding_key: &str, routing_key: &str) -> bool {
    match kind {
        "fanout" => true,
        "direct" => binding_key == routing_key,
        "topic" => matches(binding_key, routing_key),
        _ => false,
    }
}

/// `(binding key, routing key, matches)`: the cases the unit tests check and
/// `crates/amqp8/tests/rabbit_topic.rs` checks against the real RabbitMQ, so that
/// [`matches`] and the broker are known to agree on them (the empty key and empty words
/// included).
#[doc(hidden)]
pub const CASES: &[(&str, &str, bool)] = &[
    ("cptm8.num8.#", "cptm8.num8.get.scan", true),
    ("cptm8.qnum8.#", "cptm8.num8.get.scan", false),
    ("cptm8.asmm8.#", "cptm8.asmm8", true),
    ("#", "cptm8.num8.get.scan", true),
    ("cptm8.*.get.scan", "cptm8.num8.get.scan", true),
    ("cptm8.*.get.scan", "cptm8.get.scan", false),
    ("cptm8.*.scan", "cptm8.num8.get.scan", false),
    ("cptm8.*", "cptm8.a.b", false),
    ("*.num8", "cptm8.num8.get.scan", false),
    ("cptm8.num8.get.scan.#", "cptm8.num8.get.scan", true),
    ("cptm8.#.scan", "cptm8.num8.get.scan", true),
    ("cptm8.#.scan", "cptm8.scan", true),
    ("cptm8.#.#.scan", "cptm8.scan", true),
    ("#.get.#", "cptm8.num8.get.scan", true),
    ("#.scan", "cptm8.asmm8.get.scan", true),
    ("a.#.z", "a.b.c", false),
    ("cptm8.num8.get", "cptm8.num8.get.scan", false),
    ("cptm8.num8.get.scan", "cptm8.num8.get", false),
    (
        "cptm8.orchestratorm8.*.completed",
        "cptm8.orchestratorm8.asmm8.completed",
        true,
    ),
    // The empty key has no words; an empty word is a word.
    ("#", "", true),
    ("*", "", false),
    ("", "", true),
    ("", "a", false),
    ("a.#", "a", true),
    ("a.*", "a.", true),
    ("a.*", "a", false),
    ("*", ".", false),
    ("*.*", ".", true),
    ("#", ".", true),
    ("*", "a", true),
    ("a.b", "a.b", true),
    ("a.b", "a.b.c", false),
    ("a.b.c", "a.b", false),
    ("a.#.z", "a.z", true),
    ("a.#.z", "a.b.c.z", true),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_matching_follows_rabbitmq() {
        for &(pattern, key, expected) in CASES {
            assert_eq!(
                matches(pattern, key),
                expected,
                "{pattern:?} against {key:?}"
            );
        }
    }

    #[test]
    fn many_hashes_on_a_long_key_stay_fast() {
        let key = vec!["w"; 200].join(".");
        let pattern = vec!["#"; 100].join(".") + ".x";
        assert!(!matches(&pattern, &key));
        assert!(matches(&(vec!["#"; 100].join(".") + ".w"), &key));
    }

    #[test]
    fn exchange_kinds() {
        assert!(routes("direct", "a.b", "a.b"));
        assert!(!routes("direct", "a.*", "a.b"));
        assert!(routes("fanout", "x", "y"));
        assert!(routes("topic", "a.*", "a.b"));
        assert!(!routes("headers", "", ""));
    }
}
