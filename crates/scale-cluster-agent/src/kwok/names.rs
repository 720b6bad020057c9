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

/// `count` names `<prefix>-NNNNN`, numbered after the highest `<prefix>-N` among `existing`, so a
/// second bulk request adds clusters instead of colliding with the first.
pub fn next_in_series<'a>(
    prefix: &str,
    existing: impl IntoIterator<Item = &'a str>,
    count: usize,
) -> Vec<String> {
    let highest = existing
        .into_iter()
        .filter_map(|name| {
            name.strip_prefix(prefix)?
                .strip_prefix('-')?
                .parse::<usize>()
                .ok()
        })
        .max()
        .unwrap_or(0);
    (highest + 1..=highest + count)
        .map(|i| numbered(prefix, i))
        .collect()
}

/// The `i`-th name of a series: `<prefix>-NNNNN`.
pub fn numbered(prefix: &str, i: usize) -> String {
    format!("{prefix}-{i:05}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_continue_after_the_highest_existing_number() {
        assert_eq!(next_in_series("sim", [], 2), ["sim-00001", "sim-00002"]);
        let existing = [
            "sim-00003",
            "sim-7",
            "other-00009",
            "sim-x",
            "simulated-00050",
        ];
        assert_eq!(next_in_series("sim", existing, 1), ["sim-00008"]);
    }

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
