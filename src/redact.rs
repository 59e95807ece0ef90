//! Keeping secrets out of text: every string that may reach a log, an error message or an
//! argv listing goes through `Secrets::redact` first.

/// The secret strings of this run (API tokens, later secret mount contents).
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    values: Vec<String>,
}

impl Secrets {
    pub fn new() -> Secrets {
        Secrets::default()
    }

    /// Remember a secret. Very short values are ignored: masking "a" would mangle every
    /// message and such a value protects nothing anyway.
    pub fn add(&mut self, secret: &str) {
        if secret.len() >= 8 && !self.values.iter().any(|v| v == secret) {
            self.values.push(secret.to_string());
            // Longest first, so a token that contains another is masked whole.
            self.values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        }
    }

    /// `text` with every secret replaced by `[REDACTED]`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in &self.values {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), "[REDACTED]");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_every_occurrence_and_the_longest_first() {
        let mut s = Secrets::new();
        s.add("abcdefgh");
        s.add("v2/zzzzz-gj3su-000000000000000/abcdefghXYZ");
        let text = "token v2/zzzzz-gj3su-000000000000000/abcdefghXYZ and abcdefgh";
        assert_eq!(s.redact(text), "token [REDACTED] and [REDACTED]");
    }

    #[test]
    fn ignores_short_values() {
        let mut s = Secrets::new();
        s.add("ab");
        assert_eq!(s.redact("ab ab"), "ab ab");
    }
}
