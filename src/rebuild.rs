//! The one rule a reload follows for every part it builds: a part whose settings did not
//! change is kept as it is, with the state it gathered (health, breakers, keys, in-flight
//! builds, memos); a part whose settings changed is built anew.

use std::sync::Arc;

/// A part of a configuration snapshot, built from checked settings, that a reload may keep.
pub(crate) trait Rebuild: Sized {
    /// The checked settings the part is built from; equal settings build an equal part.
    type Settings: PartialEq + ?Sized;

    /// The settings this part was built from.
    fn settings(&self) -> &Self::Settings;

    /// `previous` itself when it was built from settings equal to `settings`; otherwise a
    /// new part from `build`.
    fn rebuild(
        settings: &Self::Settings,
        previous: Option<&Arc<Self>>,
        build: impl FnOnce() -> Self,
    ) -> Arc<Self> {
        match previous {
            Some(p) if p.settings() == settings => p.clone(),
            _ => Arc::new(build()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Part(u32, &'static str);

    impl Rebuild for Part {
        type Settings = u32;
        fn settings(&self) -> &u32 {
            &self.0
        }
    }

    #[test]
    fn equal_settings_keep_the_part_and_changed_ones_build_a_new_one() {
        let old = Arc::new(Part(1, "old"));
        let kept = Part::rebuild(&1, Some(&old), || Part(1, "new"));
        assert!(Arc::ptr_eq(&kept, &old));
        let changed = Part::rebuild(&2, Some(&old), || Part(2, "new"));
        assert_eq!(changed.1, "new");
        let first = Part::rebuild(&1, None, || Part(1, "new"));
        assert_eq!(first.1, "new");
    }
}
