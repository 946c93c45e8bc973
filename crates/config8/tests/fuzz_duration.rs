//! Property tests of the Go duration parser against an independent model.
//!
//! `config8::duration`'s own unit tests check that it never panics on arbitrary text,
//! that `format` then `parse` round-trips and that whole units add up. These check the
//! answers themselves: texts are built from components (sign, integer digits, fraction
//! digits, unit) whose validity and exact value are known by construction, and the
//! parser must accept exactly the valid ones with exactly the value
//! `sum(floor((int.frac) * unit))` (Go's per-component truncation), refuse the rest
//! with the right error, and refuse every total above Go's maximum (`i64::MAX` ns).

use std::time::Duration;

use config8::duration::{DurationError, MAX, format, parse};
use proptest::prelude::*;

const UNITS: &[(&str, u128)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("μs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// Letters that are not a unit whichever way they are cut by the next digit or dot.
const BAD_UNITS: &[&str] = &["d", "sec", "x", "H", "S", "mss", "hr", "ns_", "µ", " s"];

#[derive(Debug, Clone)]
enum Unit {
    Known(usize),
    Unknown(&'static str),
}

/// One `<int>[.<frac>]<unit>` component; `frac` is `None` without a dot.
#[derive(Debug, Clone)]
struct Component {
    int: String,
    frac: Option<String>,
    unit: Unit,
}

impl Component {
    fn text(&self) -> String {
        let mut s = self.int.clone();
        if let Some(f) = &self.frac {
            s.push('.');
            s.push_str(f);
        }
        match self.unit {
            Unit::Known(i) => s.push_str(UNITS[i].0),
            Unit::Unknown(u) => s.push_str(u),
        }
        s
    }

    fn has_digits(&self) -> bool {
        !self.int.is_empty() || self.frac.as_ref().is_some_and(|f| !f.is_empty())
    }

    /// `floor((int.frac) * unit)` in nanoseconds, exactly; `None` past u128.
    fn nanos(&self, per: u128) -> Option<u128> {
        let int: u128 = if self.int.is_empty() {
            0
        } else {
            self.int.parse().ok()?
        };
        let mut ns = int.checked_mul(per)?;
        if let Some(f) = self.frac.as_ref().filter(|f| !f.is_empty()) {
            let num: u128 = f.parse().ok()?;
            let den = 10u128.checked_pow(f.len() as u32)?;
            ns = ns.checked_add(num.checked_mul(per)? / den)?;
        }
        Some(ns)
    }
}

fn digits(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::string::string_regex(&format!("[0-9]{{1,{}}}", max.min(4))).unwrap(),
        1 => proptest::string::string_regex(&format!("[0-9]{{1,{max}}}")).unwrap(),
    ]
}

fn component() -> impl Strategy<Value = Component> {
    let unit = prop_oneof![
        9 => (0..UNITS.len()).prop_map(Unit::Known),
        1 => prop::sample::select(BAD_UNITS).prop_map(Unit::Unknown),
    ];
    (
        prop_oneof![3 => digits(22), 1 => Just(String::new())],
        prop_oneof![2 => Just(None), 1 => prop::option::of(digits(18))],
        unit,
    )
        .prop_map(|(int, frac, unit)| Component { int, frac, unit })
}

/// What the parser must answer for `sign` followed by `parts` (and, when `bare` is
/// given, a last number without unit).
fn expected(
    sign: &str,
    parts: &[Component],
    bare: Option<&str>,
) -> Result<Duration, DurationError> {
    let body: String = parts.iter().map(Component::text).collect::<String>() + bare.unwrap_or("");
    if sign == "-" {
        return Err(DurationError::Negative);
    }
    if body == "0" {
        return Ok(Duration::ZERO);
    }
    if body.is_empty() {
        return Err(DurationError::Empty);
    }
    let max = MAX.as_nanos();
    let mut total: u128 = 0;
    for p in parts {
        if !p.has_digits() {
            return Err(DurationError::InvalidNumber);
        }
        let per = match p.unit {
            Unit::Known(i) => UNITS[i].1,
            Unit::Unknown(u) => return Err(DurationError::UnknownUnit(u.to_owned())),
        };
        match p.nanos(per) {
            Some(ns) if total + ns <= max => total += ns,
            _ => return Err(DurationError::Overflow),
        }
    }
    if bare.is_some() {
        return Err(DurationError::MissingUnit);
    }
    Ok(Duration::from_nanos(total as u64))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn answers_match_the_model(
        sign in prop::sample::select(vec!["", "", "", "+", "-"]),
        mut parts in prop::collection::vec(component(), 0..5),
        bare in prop::option::weighted(0.15, digits(6)),
    ) {
        // A component without digits would glue its unit to the previous one ("1m" +
        // "s" reads "1ms"), which the model does not follow: keep them first only.
        for p in parts.iter_mut().skip(1) {
            if !p.has_digits() {
                p.int = "1".into();
            }
        }
        // An unknown unit must be the last thing that is read: cut after it.
        if let Some(i) = parts.iter().position(|p| matches!(p.unit, Unit::Unknown(_)) || !p.has_digits()) {
            parts.truncate(i + 1);
        }
        let bare = if parts.last().is_some_and(|p| !p.has_digits() || matches!(p.unit, Unit::Unknown(_))) {
            None
        } else {
            bare
        };
        let text = format!("{sign}{}{}", parts.iter().map(Component::text).collect::<String>(), bare.as_deref().unwrap_or(""));
        let want = expected(sign, &parts, bare.as_deref());
        let got = parse(&text);
        prop_assert_eq!(&got, &want, "{:?}", text);
        if let Ok(d) = got {
            // Whatever was accepted prints back to text meaning the same.
            prop_assert_eq!(parse(&format(d)), Ok(d));
        }
    }

    #[test]
    fn the_largest_durations_are_exact(back in 0u64..5_000_000) {
        let ns = MAX.as_nanos() as u64 - back;
        let d = Duration::from_nanos(ns);
        prop_assert_eq!(parse(&format(d)), Ok(d));
        prop_assert_eq!(parse(&format!("{ns}ns")), Ok(d));
        prop_assert_eq!(parse(&format!("{}ns", u128::from(ns) + u128::from(back) + 1)), Err(DurationError::Overflow));
    }
}

#[test]
fn the_model_is_exercised_on_both_sides() {
    // The generator yields accepted and refused texts alike; spot-check the model on
    // hand-written cases so that a wrong model cannot agree with a wrong parser.
    let c = |int: &str, frac: Option<&str>, unit: usize| Component {
        int: int.into(),
        frac: frac.map(String::from),
        unit: Unit::Known(unit),
    };
    assert_eq!(
        expected("", &[c("1", Some("5"), 7)], None),
        Ok(Duration::from_secs(5400))
    );
    assert_eq!(
        expected("", &[c("", Some("5"), 0), c("0", Some("5"), 0)], None),
        Ok(Duration::ZERO),
        "each component truncates on its own, as Go"
    );
    assert_eq!(
        expected(
            "+",
            &[
                c("2562047", None, 7),
                c("47", None, 6),
                c("16", Some("854775808"), 5)
            ],
            None
        ),
        Err(DurationError::Overflow)
    );
    assert_eq!(
        expected("", &[], Some("10")),
        Err(DurationError::MissingUnit)
    );
    assert_eq!(expected("", &[], Some("0")), Ok(Duration::ZERO));
    assert_eq!(parse("1.5h"), expected("", &[c("1", Some("5"), 7)], None));
}
