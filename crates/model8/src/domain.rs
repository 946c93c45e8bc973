//! Target domains (`cptm8domain` rows) and the validation of their names.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Longest name the `cptm8domain.name varchar(200)` column holds.
pub const MAX_NAME_LEN: usize = 200;
/// Longest company name the `cptm8domain.companyname varchar(50)` column holds.
pub const MAX_COMPANY_LEN: usize = 50;

/// A row of `cptm8domain` (Go `model8.Domain8`). A NULL `companyname` reads as `""`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Domain8 {
    /// Primary key.
    pub id: Uuid,
    /// The domain name, e.g. `example.com`.
    pub name: String,
    /// Owner of the domain.
    pub companyname: String,
    /// Whether the domain is scanned.
    pub enabled: bool,
}

/// A domain to insert or the new values of one to update (Go `model8.PostDomain8`).
/// Unlike Go, an absent `enabled` means `true`, the table's own default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostDomain8 {
    /// The domain name; validate it with [`DomainName::parse`] before storing.
    pub name: String,
    /// Owner of the domain.
    pub companyname: String,
    /// Whether the domain is scanned.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
}

fn enabled_by_default() -> bool {
    true
}

impl PostDomain8 {
    /// Validates and normalises name and company: the result holds the canonical
    /// (lower-case, punycoded) name.
    pub fn validated(&self) -> Result<PostDomain8, DomainNameError> {
        Ok(PostDomain8 {
            name: DomainName::parse(&self.name)?.into_string(),
            companyname: CompanyName::parse(&self.companyname)?.into_string(),
            enabled: self.enabled,
        })
    }
}

/// Why a domain or company name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainNameError {
    /// The name is empty (or only a dot).
    #[error("domain name is empty")]
    Empty,
    /// The (punycoded) name is longer than the column allows.
    #[error("domain name {name:?} is {len} characters long; at most {MAX_NAME_LEN} are allowed")]
    TooLong {
        /// The offending name.
        name: String,
        /// Its length.
        len: usize,
    },
    /// One label is empty or longer than 63 characters.
    #[error("domain name {name:?}: label {label:?} must be 1 to 63 characters long")]
    LabelLength {
        /// The offending name.
        name: String,
        /// The offending label.
        label: String,
    },
    /// A label holds a character other than a-z, 0-9 and `-`.
    #[error(
        "domain name {name:?}: invalid character {ch:?} (allowed: letters, digits, '-' and '.')"
    )]
    InvalidChar {
        /// The offending name.
        name: String,
        /// The first bad character.
        ch: char,
    },
    /// A label starts or ends with a hyphen.
    #[error("domain name {name:?}: label {label:?} must not start or end with '-'")]
    Hyphen {
        /// The offending name.
        name: String,
        /// The offending label.
        label: String,
    },
    /// The last label is all digits: this is an IP address or not a domain.
    #[error(
        "{name:?} is not a domain name (its top-level label is numeric; IP addresses are not accepted)"
    )]
    NumericTld {
        /// The offending name.
        name: String,
    },
    /// An internationalised name that cannot be converted to punycode.
    #[error("domain name {name:?} is not a valid internationalised domain name")]
    Idna {
        /// The offending name.
        name: String,
    },
    /// The company name is empty, too long or holds control characters.
    #[error(
        "company name {name:?} must be 1 to {MAX_COMPANY_LEN} characters without control characters"
    )]
    Company {
        /// The offending company name.
        name: String,
    },
}

/// A validated domain name: RFC 1123 host name syntax, lower case, at most
/// [`MAX_NAME_LEN`] characters, one trailing dot dropped. Internationalised names are
/// converted to punycode (UTS #46), so `bücher.example` is stored as
/// `xn--bcher-kva.example`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct DomainName(String);

impl DomainName {
    /// Validates and normalises `input`.
    pub fn parse(input: &str) -> Result<Self, DomainNameError> {
        let trimmed = input.trim();
        let trimmed = trimmed.strip_suffix('.').unwrap_or(trimmed);
        if trimmed.is_empty() {
            return Err(DomainNameError::Empty);
        }
        let ascii = if trimmed.is_ascii() {
            trimmed.to_ascii_lowercase()
        } else {
            idna::domain_to_ascii(trimmed).map_err(|_| DomainNameError::Idna {
                name: input.to_owned(),
            })?
        };
        let name = ascii.as_str();
        if name.len() > MAX_NAME_LEN {
            return Err(DomainNameError::TooLong {
                name: input.to_owned(),
                len: name.len(),
            });
        }
        for label in name.split('.') {
            if label.is_empty() || label.len() > 63 {
                return Err(DomainNameError::LabelLength {
                    name: input.to_owned(),
                    label: label.to_owned(),
                });
            }
            if let Some(ch) = label
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
            {
                return Err(DomainNameError::InvalidChar {
                    name: input.to_owned(),
                    ch,
                });
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(DomainNameError::Hyphen {
                    name: input.to_owned(),
                    label: label.to_owned(),
                });
            }
        }
        let tld = name.rsplit('.').next().unwrap_or(name);
        if tld.chars().all(|c| c.is_ascii_digit()) {
            return Err(DomainNameError::NumericTld {
                name: input.to_owned(),
            });
        }
        Ok(DomainName(ascii))
    }

    /// The canonical name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The canonical name, owned.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for DomainName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        DomainName::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A validated company name: 1 to [`MAX_COMPANY_LEN`] characters, trimmed, no control
/// characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CompanyName(String);

impl CompanyName {
    /// Validates `input`.
    pub fn parse(input: &str) -> Result<Self, DomainNameError> {
        let t = input.trim();
        if t.is_empty() || t.chars().count() > MAX_COMPANY_LEN || t.chars().any(char::is_control) {
            return Err(DomainNameError::Company {
                name: input.to_owned(),
            });
        }
        Ok(CompanyName(t.to_owned()))
    }

    /// The company name, owned.
    pub fn into_string(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_normalises() {
        assert_eq!(
            DomainName::parse("Example.COM.").unwrap().as_str(),
            "example.com"
        );
        assert_eq!(
            DomainName::parse(" a-b.c0.io ").unwrap().as_str(),
            "a-b.c0.io"
        );
        assert_eq!(
            DomainName::parse("localhost").unwrap().as_str(),
            "localhost"
        );
        assert_eq!(
            DomainName::parse("bücher.example").unwrap().as_str(),
            "xn--bcher-kva.example"
        );
        assert_eq!(
            DomainName::parse("xn--bcher-kva.example").unwrap().as_str(),
            "xn--bcher-kva.example"
        );
    }

    #[test]
    fn rejects_with_typed_errors() {
        use DomainNameError::*;
        assert_eq!(DomainName::parse(""), Err(Empty));
        assert_eq!(DomainName::parse("."), Err(Empty));
        assert!(matches!(DomainName::parse("a..b"), Err(LabelLength { .. })));
        assert!(matches!(
            DomainName::parse(&format!("{}.com", "a".repeat(64))),
            Err(LabelLength { .. })
        ));
        assert!(matches!(
            DomainName::parse("exa_mple.com"),
            Err(InvalidChar { ch: '_', .. })
        ));
        assert!(matches!(
            DomainName::parse("a b.com"),
            Err(InvalidChar { ch: ' ', .. })
        ));
        assert!(matches!(DomainName::parse("-a.com"), Err(Hyphen { .. })));
        assert!(matches!(DomainName::parse("a-.com"), Err(Hyphen { .. })));
        assert!(matches!(
            DomainName::parse("10.0.0.1"),
            Err(NumericTld { .. })
        ));
        let long = vec!["abcdefghij"; 19].join(".") + ".example"; // 216 chars
        assert!(matches!(
            DomainName::parse(&long),
            Err(TooLong { len: 216, .. })
        ));
        assert!(matches!(
            DomainName::parse("exa\u{0}mple.com"),
            Err(Idna { .. } | InvalidChar { .. })
        ));
    }

    #[test]
    fn limits_are_inclusive() {
        // A 63-character label and a 200-character name are the largest allowed.
        let label = "a".repeat(63);
        assert_eq!(
            DomainName::parse(&format!("{label}.com"))
                .unwrap()
                .as_str()
                .len(),
            67
        );
        let name = format!("{label}.{label}.{label}.abcdefgh");
        assert_eq!(name.len(), MAX_NAME_LEN);
        assert_eq!(DomainName::parse(&name).unwrap().into_string(), name);
        let over = format!("x{name}");
        assert!(matches!(
            DomainName::parse(&over),
            Err(DomainNameError::TooLong { len: 201, .. })
        ));
        let company = "c".repeat(MAX_COMPANY_LEN);
        assert_eq!(CompanyName::parse(&company).unwrap().into_string(), company);
    }

    #[test]
    fn shown_as_the_canonical_name() {
        let d = DomainName::parse(" Example.COM ").unwrap();
        assert_eq!(d.to_string(), "example.com");
        assert_eq!(format!("<{d}>"), "<example.com>");
        assert_eq!(
            CompanyName::parse("  ACME Ltd ").unwrap().into_string(),
            "ACME Ltd"
        );
    }

    #[test]
    fn company_limits() {
        assert!(CompanyName::parse("ACME Ltd").is_ok());
        assert!(CompanyName::parse("").is_err());
        assert!(CompanyName::parse(&"x".repeat(51)).is_err());
        assert!(CompanyName::parse("a\nb").is_err());
    }

    #[test]
    fn golden_domain8_json() {
        let d = Domain8 {
            id: Uuid::parse_str("6f1c1d0e-8a4b-4c1e-9f7a-2b3c4d5e6f70").unwrap(),
            name: "example.com".into(),
            companyname: "ACME".into(),
            enabled: true,
        };
        assert_eq!(
            serde_json::to_string(&d).unwrap(),
            r#"{"id":"6f1c1d0e-8a4b-4c1e-9f7a-2b3c4d5e6f70","name":"example.com","companyname":"ACME","enabled":true}"#
        );
        let p: PostDomain8 =
            serde_json::from_str(r#"{"name":"Example.com","companyname":"ACME"}"#).unwrap();
        assert!(p.enabled);
        assert_eq!(p.validated().unwrap().name, "example.com");
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics_and_output_is_a_fixed_point(s in "\\PC{0,80}") {
            if let Ok(d) = DomainName::parse(&s) {
                proptest::prop_assert_eq!(DomainName::parse(d.as_str()).unwrap(), d.clone());
                proptest::prop_assert!(d.as_str().len() <= MAX_NAME_LEN);
            }
        }
    }
}
