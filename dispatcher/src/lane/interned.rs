//! Sharing alike settings between lanes.

use std::sync::Arc;

/// One copy of each distinct value among a few: 100,000 endpoints mostly
/// share a handful of retry and breaker policies, which would otherwise be
/// copied into each lane (with a heap-allocated retry schedule each).
/// Values beyond the first `MAX` distinct ones are not shared.
pub struct Interned<T> {
    seen: Vec<Arc<T>>,
}

impl<T: PartialEq + Clone> Interned<T> {
    const MAX: usize = 16;

    pub fn new() -> Self {
        Interned { seen: Vec::new() }
    }

    pub fn get(&mut self, value: &T) -> Arc<T> {
        if let Some(shared) = self.seen.iter().find(|s| ***s == *value) {
            return shared.clone();
        }
        let shared = Arc::new(value.clone());
        if self.seen.len() < Self::MAX {
            self.seen.push(shared.clone());
        }
        shared
    }
}

impl<T: PartialEq + Clone> Default for Interned<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alike_values_share_one_copy_and_the_copies_are_bounded() {
        let mut interned = Interned::new();
        let a = interned.get(&vec![1, 2]);
        assert!(Arc::ptr_eq(&a, &interned.get(&vec![1, 2])));
        assert!(!Arc::ptr_eq(&a, &interned.get(&vec![3])));
        for i in 0..100 {
            assert_eq!(*interned.get(&vec![i; 3]), vec![i; 3]);
        }
        assert_eq!(interned.seen.len(), Interned::<Vec<i32>>::MAX);
        // Past the bound, values are still right, just not shared.
        let late = interned.get(&vec![99; 3]);
        assert!(!Arc::ptr_eq(&late, &interned.get(&vec![99; 3])));
        assert!(Arc::ptr_eq(&a, &interned.get(&vec![1, 2])));
    }
}
