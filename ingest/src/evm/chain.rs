//! The recent canonical chain as one block task has seen it. Pure.
//!
//! Holds the headers of the last `capacity` blocks processed, by number. For each new head
//! [`ChainView::place`] says how it joins the chain: it extends the last block, it is
//! already known, blocks are missing before it (a gap, after a reconnect or a missed
//! notification), or its parent is not the block this view holds at that height (a reorg,
//! to be followed back by parent hash until [`ChainView::links`] is true). [`ChainView::truncate_from`]
//! then drops the replaced blocks, which the caller retracts.

use std::collections::BTreeMap;

use super::types::Header;

/// The place of a new head relative to the chain view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// The view is empty or the head's parent is the last block.
    Extends,
    /// The head is a block of the view already.
    Known,
    /// Blocks `from..=to` are missing between the last block and the head.
    Gap { from: u64, to: u64 },
    /// The head's parent is not the view's block at that height: follow it back by hash.
    Fork,
}

#[derive(Debug, Clone)]
pub struct ChainView {
    blocks: BTreeMap<u64, Header>,
    capacity: usize,
}

impl ChainView {
    pub fn new(capacity: usize) -> Self {
        ChainView {
            blocks: BTreeMap::new(),
            capacity: capacity.max(2),
        }
    }

    pub fn last(&self) -> Option<&Header> {
        self.blocks.values().next_back()
    }

    pub fn get(&self, number: u64) -> Option<&Header> {
        self.blocks.get(&number)
    }

    /// Returns the block with this hash, when the view holds it.
    pub fn by_hash(&self, hash: &str) -> Option<&Header> {
        self.blocks.values().rev().find(|h| h.hash == hash)
    }

    pub fn place(&self, head: &Header) -> Placement {
        let Some(last) = self.last() else {
            return Placement::Extends;
        };
        if self
            .get(head.number)
            .is_some_and(|known| known.hash == head.hash)
        {
            return Placement::Known;
        }
        if head.number == last.number + 1 && head.parent_hash == last.hash {
            return Placement::Extends;
        }
        if head.number > last.number + 1 {
            return Placement::Gap {
                from: last.number + 1,
                to: head.number - 1,
            };
        }
        Placement::Fork
    }

    /// Returns whether `header` joins the view: its parent is the view's block at the height
    /// below, or that height is not held (older than the view, or the view is empty).
    pub fn links(&self, header: &Header) -> bool {
        match header.number.checked_sub(1).and_then(|n| self.get(n)) {
            Some(parent) => parent.hash == header.parent_hash,
            None => true,
        }
    }

    /// Removes the blocks at `number` and above and returns them, oldest first.
    pub fn truncate_from(&mut self, number: u64) -> Vec<Header> {
        let removed = self.blocks.split_off(&number);
        removed.into_values().collect()
    }

    /// Appends a processed block and drops the oldest beyond the capacity.
    pub fn push(&mut self, header: Header) {
        self.blocks.insert(header.number, header);
        while self.blocks.len() > self.capacity {
            self.blocks.pop_first();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(number: u64, fork: &str) -> Header {
        Header {
            number,
            hash: format!("0x{fork}{number}"),
            parent_hash: format!("0x{fork}{}", number - 1),
            timestamp: number * 12,
        }
    }

    fn view(numbers: std::ops::RangeInclusive<u64>) -> ChainView {
        let mut view = ChainView::new(64);
        for number in numbers {
            view.push(header(number, "a"));
        }
        view
    }

    #[test]
    fn next_block_extends() {
        assert_eq!(view(1..=5).place(&header(6, "a")), Placement::Extends);
        assert_eq!(ChainView::new(8).place(&header(6, "a")), Placement::Extends);
    }

    #[test]
    fn repeated_head_is_known() {
        assert_eq!(view(1..=5).place(&header(4, "a")), Placement::Known);
    }

    #[test]
    fn missing_blocks_are_a_gap() {
        assert_eq!(
            view(1..=5).place(&header(9, "a")),
            Placement::Gap { from: 6, to: 8 }
        );
    }

    #[test]
    fn other_parent_is_a_fork() {
        let view = view(1..=5);
        let mut sibling = header(6, "b");
        sibling.parent_hash = "0xb5".into();

        assert_eq!(view.place(&sibling), Placement::Fork);
        assert_eq!(view.place(&header(5, "b")), Placement::Fork);
    }

    #[test]
    fn links_checks_parent_hash() {
        let view = view(3..=5);
        let mut replacement = header(5, "b");
        replacement.parent_hash = "0xa4".into();

        assert!(view.links(&replacement));
        assert!(
            !view.links(&header(5, "b")),
            "parent 0xb4 is not the view's block 4"
        );
        assert!(
            view.links(&header(3, "b")),
            "block 2 is older than the view"
        );
    }

    #[test]
    fn truncate_returns_replaced_blocks() {
        let mut view = view(1..=5);

        let removed = view.truncate_from(4);

        assert_eq!(
            removed.iter().map(|h| h.number).collect::<Vec<_>>(),
            vec![4, 5]
        );
        assert_eq!(view.last().unwrap().number, 3);
    }

    #[test]
    fn capacity_bounds_the_view() {
        let mut view = ChainView::new(3);
        for number in 1..=10 {
            view.push(header(number, "a"));
        }

        assert_eq!(view.get(7), None);
        assert_eq!(view.get(8).unwrap().number, 8);
        assert_eq!(view.by_hash("0xa10").unwrap().number, 10);
    }
}
