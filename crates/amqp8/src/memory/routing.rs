//! Exchange routing as RabbitMQ does it: direct, fanout and topic (`*` one word, `#`
//! zero or more words).

/// Whether a binding key matches a routing key on an exchange of `kind`.
pub(crate) fn matches(kind: &str, binding_key: &str, routing_key: &str) -> bool {
    match kind {
        "fanout" => true,
        "direct" => binding_key == routing_key,
        "topic" => topic_matches(binding_key, routing_key),
        // Headers exchanges route on headers, which this double does not model.
        _ => false,
    }
}

/// Topic matching: words separated by `.`, `*` matches exactly one word, `#` zero or
/// more.
pub(crate) fn topic_matches(pattern: &str, key: &str) -> bool {
    let p: Vec<&str> = pattern.split('.').collect();
    let k: Vec<&str> = if key.is_empty() {
        Vec::new()
    } else {
        key.split('.').collect()
    };
    let p: Vec<&str> = if pattern.is_empty() { Vec::new() } else { p };
    words_match(&p, &k)
}

fn words_match(p: &[&str], k: &[&str]) -> bool {
    match p.split_first() {
        None => k.is_empty(),
        Some((&"#", rest)) => (0..=k.len()).any(|i| words_match(rest, &k[i..])),
        Some((&"*", rest)) => !k.is_empty() && words_match(rest, &k[1..]),
        Some((w, rest)) => k.first() == Some(w) && words_match(rest, &k[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_wildcards() {
        let yes = [
            ("cptm8.asmm8.#", "cptm8.asmm8.get.scan"),
            ("cptm8.asmm8.#", "cptm8.asmm8"),
            ("cptm8.*.get.scan", "cptm8.naabum8.get.scan"),
            ("#", "anything.at.all"),
            ("#", ""),
            ("#.scan", "cptm8.asmm8.get.scan"),
            ("cptm8.#.scan", "cptm8.scan"),
            (
                "cptm8.orchestratorm8.*.completed",
                "cptm8.orchestratorm8.asmm8.completed",
            ),
            ("a.b", "a.b"),
        ];
        for (p, k) in yes {
            assert!(topic_matches(p, k), "{p} should match {k}");
        }
        let no = [
            ("cptm8.asmm8.#", "cptm8.naabum8.get.scan"),
            ("cptm8.*.get.scan", "cptm8.get.scan"),
            ("cptm8.*", "cptm8.a.b"),
            ("*", ""),
            ("a.b", "a.b.c"),
            ("a.b.c", "a.b"),
        ];
        for (p, k) in no {
            assert!(!topic_matches(p, k), "{p} should not match {k}");
        }
    }

    #[test]
    fn kinds() {
        assert!(matches("direct", "a.b", "a.b"));
        assert!(!matches("direct", "a.*", "a.b"));
        assert!(matches("fanout", "x", "y"));
        assert!(matches("topic", "a.*", "a.b"));
        assert!(!matches("headers", "", ""));
    }
}
