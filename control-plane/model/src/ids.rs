//! Identifiers and the names people give things. Rules: a pool name is 1–64 of
//! `[A-Za-z0-9._-]` (it appears in URLs, file names and `watch = DIR=POOL`); a label is 1–128
//! printable characters without surrounding spaces. A failed check names the field it was for,
//! so the CLI and the admin API can point at it.

pub use crate::util::new_id;

pub const MAX_LABEL_LEN: usize = 128;

/// A value that failed its check: which field, and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidValue {
    pub field: &'static str,
    pub message: String,
}

impl InvalidValue {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// Pool names: 1–64 of `[A-Za-z0-9._-]`.
pub fn validate_pool_name(name: &str) -> Result<(), InvalidValue> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(InvalidValue::new(
            "name",
            format!("invalid pool name {name:?}: use 1-64 characters from A-Z a-z 0-9 . _ -"),
        ))
    }
}

/// Labels are for people: 1–128 characters, no control characters.
pub fn validate_label(label: &str) -> Result<(), InvalidValue> {
    let n = label.chars().count();
    if (1..=MAX_LABEL_LEN).contains(&n)
        && !label.chars().any(char::is_control)
        && label.trim() == label
    {
        Ok(())
    } else {
        Err(InvalidValue::new(
            "label",
            format!(
                "invalid label {label:?}: use 1-{MAX_LABEL_LEN} printable characters without \
                 leading or trailing spaces"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_names_and_labels() {
        assert!(validate_pool_name("team-a.prod_1").is_ok());
        assert_eq!(validate_pool_name("a b").map_err(|e| e.field), Err("name"));
        assert_eq!(validate_pool_name("").map_err(|e| e.field), Err("name"));
        assert!(validate_label("Alice's Plus").is_ok());
        assert_eq!(validate_label(" x").map_err(|e| e.field), Err("label"));
        assert_eq!(validate_label("a\nb").map_err(|e| e.field), Err("label"));
    }
}
