//! Cluster name rules. A name becomes a directory, a kwokctl cluster name, a kubeconfig context
//! (`kwok-<name>`) and later a Rancher cluster name, so it must be an RFC 1123 DNS label.

/// Longest accepted name: the kubeconfig context `kwok-<name>` must itself stay a valid label.
pub const MAX_NAME_LEN: usize = 63 - "kwok-".len();

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid cluster name {name:?}: {reason}")]
pub struct InvalidName {
    pub name: String,
    pub reason: &'static str,
}

/// Accepts lowercase RFC 1123 labels: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most [`MAX_NAME_LEN`] long.
pub fn validate(name: &str) -> Result<(), InvalidName> {
    let fail = |reason| {
        Err(InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return fail("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return fail("it is longer than 58 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return fail("only lowercase letters, digits and '-' are allowed (RFC 1123)");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return fail("it must start and end with a letter or digit (RFC 1123)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels() {
        for ok in ["a", "c0", "sim-001", &"x".repeat(MAX_NAME_LEN)] {
            assert_eq!(validate(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "a.b",
            "a/b",
            "..",
            "é",
            &"x".repeat(MAX_NAME_LEN + 1),
        ] {
            assert!(validate(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
