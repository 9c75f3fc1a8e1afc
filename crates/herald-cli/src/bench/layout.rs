//! Which topics each subscriber subscribes to, and how an update is keyed
//! in the set of updates a subscriber has seen.
//!
//! Topics are numbered `0..topics`; update `seq` goes to topic
//! `seq % topics`, its `seq / topics`-th update (its per-topic index). The
//! subscribers share `slots = min(topics, subscribers)` subscriptions:
//! subscriber `index` takes slot `index % slots`, which holds every topic
//! `t` with `t % slots == slot`. With no more topics than subscribers each
//! slot is one topic (subscriber `index` on topic `index % topics`); with
//! more, each subscriber carries several topics in one request, so that
//! every topic still has a subscriber even when there are far more topics
//! than connections one process can hold.
//!
//! Within its slot, the `j`-th topic (`j = t / slots`) of a slot of `k`
//! topics gives its update of per-topic index `i` the key `i * k + j`:
//! unique per slot, dense, and rising with `seq`, so the seen set of a
//! subscriber stays a compact bit set. With one topic per slot the key is
//! the per-topic index.

/// How topics are spread over subscriptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Layout {
    topics: u64,
    slots: u64,
}

impl Layout {
    /// `topics` (at least 1) over `subscribers`. With no subscriber at all
    /// (only `--churn` subscriptions, if any), one topic per slot.
    pub fn new(topics: u64, subscribers: usize) -> Self {
        let topics = topics.max(1);
        let slots = match subscribers as u64 {
            0 => topics,
            n => topics.min(n),
        };
        Self { topics, slots }
    }

    /// Number of distinct subscriptions.
    pub fn slots(&self) -> usize {
        usize::try_from(self.slots).expect("slots are at most the subscribers or topics")
    }

    /// The slot of subscriber `index`.
    pub fn slot_of(&self, index: usize) -> usize {
        index % self.slots()
    }

    /// Number of topics in `slot`.
    pub fn topics_in(&self, slot: usize) -> u64 {
        let s = slot as u64;
        if s >= self.slots {
            return 0;
        }
        (self.topics - s).div_ceil(self.slots)
    }

    /// The topics of `slot`, in key order (`j` = 0, 1, …).
    pub fn topics_of(&self, slot: usize) -> impl Iterator<Item = u64> {
        let slots = self.slots;
        (0..self.topics_in(slot)).map(move |j| slot as u64 + j * slots)
    }

    /// Most topics one subscription carries.
    pub fn max_topics_per_slot(&self) -> u64 {
        self.topics_in(0)
    }

    /// Fewest topics one subscription carries.
    pub fn min_topics_per_slot(&self) -> u64 {
        self.topics_in(self.slots() - 1)
    }

    /// The slot update `seq` belongs to, and its key there.
    pub fn place(&self, seq: u64) -> (usize, u64) {
        let topic = seq % self.topics;
        let slot = (topic % self.slots) as usize;
        let j = topic / self.slots;
        let k = self.topics_in(slot);
        (slot, (seq / self.topics) * k + j)
    }
}

#[cfg(test)]
mod tests {
    use super::Layout;
    use std::collections::HashSet;

    /// The topics subscriber `index` subscribes to.
    fn topics_of_subscriber(l: &Layout, index: usize) -> Vec<u64> {
        l.topics_of(l.slot_of(index)).collect()
    }

    #[test]
    fn no_more_topics_than_subscribers_is_one_topic_each() {
        for (topics, subs) in [(1, 1), (1, 100), (3, 10), (10, 10), (7, 50)] {
            let l = Layout::new(topics, subs);
            assert_eq!(l.slots() as u64, topics);
            assert_eq!(l.max_topics_per_slot(), 1);
            assert_eq!(l.min_topics_per_slot(), 1);
            for index in 0..subs {
                // As before: subscriber `index` on topic `index % topics`.
                assert_eq!(topics_of_subscriber(&l, index), [index as u64 % topics]);
            }
            for seq in 0..1000 {
                // As before: the key is the per-topic index.
                assert_eq!(
                    l.place(seq),
                    ((seq % topics) as usize, seq / topics),
                    "{topics} {subs} {seq}"
                );
            }
        }
    }

    #[test]
    fn no_subscriber_is_one_topic_per_slot() {
        let l = Layout::new(5, 0);
        assert_eq!(l.slots(), 5);
        assert_eq!(l.max_topics_per_slot(), 1);
        assert_eq!(l.place(13), (3, 2));
    }

    #[test]
    fn every_topic_has_exactly_one_subscriber() {
        for (topics, subs) in [(300, 50), (100_000, 19_900), (11, 3), (64, 63), (1000, 1)] {
            let l = Layout::new(topics, subs);
            assert_eq!(l.slots(), subs);
            let mut owner = vec![None; topics as usize];
            for index in 0..subs {
                for t in topics_of_subscriber(&l, index) {
                    assert!(t < topics);
                    assert_eq!(owner[t as usize], None, "topic {t} twice");
                    owner[t as usize] = Some(index);
                }
            }
            assert!(owner.iter().all(Option::is_some), "{topics} {subs}");
            let most = l.max_topics_per_slot();
            assert_eq!(most, topics.div_ceil(subs as u64));
            assert!(l.min_topics_per_slot() == most || l.min_topics_per_slot() == most - 1);
        }
        assert_eq!(Layout::new(100_000, 19_900).max_topics_per_slot(), 6);
        assert_eq!(Layout::new(100_000, 19_900).min_topics_per_slot(), 5);
    }

    #[test]
    fn keys_are_unique_and_dense_per_slot() {
        for (topics, subs) in [(300, 50), (11, 3), (7, 7), (10, 4), (5, 100)] {
            let l = Layout::new(topics, subs);
            let rounds = 20;
            let mut keys: Vec<HashSet<u64>> = vec![HashSet::new(); l.slots()];
            for seq in 0..topics * rounds {
                let (slot, key) = l.place(seq);
                let topic = seq % topics;
                // The update lands in the slot subscribed to its topic, at
                // its topic's position there.
                assert!(l.topics_of(slot).any(|t| t == topic));
                assert!(keys[slot].insert(key), "key {key} twice in slot {slot}");
            }
            for (slot, keys) in keys.iter().enumerate() {
                // Every update of the slot's topics, keys 0..k*rounds.
                let n = l.topics_in(slot) * rounds;
                assert_eq!(keys.len() as u64, n);
                assert!(keys.iter().all(|&k| k < n), "{topics} {subs} {slot}");
            }
        }
    }

    #[test]
    fn keys_rise_with_the_sequence() {
        let l = Layout::new(300, 50);
        let mut last = vec![None; l.slots()];
        for seq in 0..30_000 {
            let (slot, key) = l.place(seq);
            assert!(last[slot] < Some(key));
            last[slot] = Some(key);
        }
    }
}
