//! Cache keys: the key template's rendering joined to the declaration's fingerprint, so a
//! changed declaration (a reload, or replicas on different files) never reads an entry built
//! for another shape.

/// Joins a rendered key and its declaration's fingerprint; the fingerprint never holds it.
const SEPARATOR: char = '#';

/// A declaration's fingerprint: a stable digest of its settings, the same on every replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Fingerprint(String);

impl Fingerprint {
    /// The fingerprint of checked settings.
    pub(super) fn of<T: std::fmt::Debug>(settings: &T) -> Fingerprint {
        Fingerprint(crate::config::fingerprint(settings))
    }

    /// The store key of the entry whose rendered key is `rendered`.
    pub(super) fn key(&self, rendered: &str) -> String {
        let mut key = String::with_capacity(rendered.len() + 1 + self.0.len());
        key.push_str(rendered);
        key.push(SEPARATOR);
        key.push_str(&self.0);
        key
    }

    /// Whether `stored` is a store key of this declaration's entries.
    pub(super) fn owns(&self, stored: &str) -> bool {
        stored
            .rsplit_once(SEPARATOR)
            .is_some_and(|(_, fingerprint)| fingerprint == self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_owned_by_its_declaration_alone() {
        let a = Fingerprint("0123456789abcdef".into());
        let b = Fingerprint("fedcba9876543210".into());
        let key = a.key("profile:1");
        assert_eq!(key, "profile:1#0123456789abcdef");
        assert!(a.owns(&key));
        assert!(!b.owns(&key));
        assert!(!a.owns("profile:1"));
        assert!(
            !a.owns("x#0123456789abcdef0"),
            "a longer fingerprint is another one"
        );
        assert!(
            a.owns(&a.key("a#b")),
            "a rendered key may hold the separator"
        );
    }
}
