//! The building blocks every section shares: secrets that never print, strings that an
//! environment variable may have made look like numbers, and choices written as one string and
//! parsed once, when the configuration is read.

use serde::{Deserialize, Serialize};

/// A secret from configuration: never printed by `Debug` (configs are logged in places).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(#[serde(deserialize_with = "lenient_string")] pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// A value a section rejects; the message names its key (`model.train_source must be ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidValue(pub String);

impl std::fmt::Display for InvalidValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A string that an environment variable may have made look like a number or a boolean
/// (`STREAMREC__SERVER__TLS__MIN_VERSION=1.2` arrives as the float 1.2): taken as written.
pub(crate) fn lenient_string<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Str(String),
        Int(i64),
        Float(f64),
        Bool(bool),
    }
    Ok(match Raw::deserialize(deserializer)? {
        Raw::Str(s) => s,
        Raw::Int(i) => i.to_string(),
        Raw::Float(f) => f.to_string(),
        Raw::Bool(b) => b.to_string(),
    })
}

pub(crate) fn lenient_opt_string<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    Ok(Option::<Lenient>::deserialize(deserializer)?.map(|w| w.0))
}

/// What a choice is read from: its string, taken as written (see [`lenient_string`]).
#[derive(Deserialize)]
pub(crate) struct Lenient(#[serde(deserialize_with = "lenient_string")] pub String);

/// Makes a type with `FromStr<Err = InvalidValue>` and `Display` read from and write to
/// configuration as its string, so that a bad value fails when the file is read.
macro_rules! string_choice {
    ($($ty:ty),* $(,)?) => {$(
        impl TryFrom<$crate::config::values::Lenient> for $ty {
            type Error = $crate::config::InvalidValue;
            fn try_from(raw: $crate::config::values::Lenient) -> Result<Self, Self::Error> {
                raw.0.parse()
            }
        }
        impl From<$ty> for String {
            fn from(value: $ty) -> String {
                value.to_string()
            }
        }
    )*};
}
pub(crate) use string_choice;

/// A URL for `Debug`: the user-info part (which may hold a password) is not printed.
pub(crate) fn redacted_url(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://<redacted>{}", &url[at..]),
        _ => url.to_owned(),
    }
}
