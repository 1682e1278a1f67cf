//! A snapshot's members, as a persistent vector: a change copies only the
//! path to what changed, so a delta to a pool of N costs O(log N) rather
//! than a copy of N members.
//!
//! The vector is a radix tree of fixed width (32), packed to the left, as
//! in Clojure's `PersistentVector` (Bagwell, *Ideal Hash Trees*, 2001):
//! member `i` sits at the leaf found by reading `i`'s bits five at a time,
//! so a lookup is a few dependent loads into nodes that stay in the cache,
//! with no search. Snapshots share every node they did not change; a
//! change clones the nodes on its path (`Arc::make_mut`) and leaves older
//! snapshots, still read by requests in flight, untouched.
//!
//! Every node also keeps its members' [`Weights`] (count, live, sum, max,
//! least live), so a weighted picker learns them for the whole set in
//! O(1) instead of scanning it on every rebuild.

use std::fmt;
use std::ops::{Index, Range};
use std::sync::Arc;

use super::Member;

/// Bits of an index per level.
const BITS: u32 = 5;
/// Children per node and members per leaf.
const WIDTH: usize = 1 << BITS;
const MASK: usize = WIDTH - 1;

/// Weight totals of a run of members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Weights {
    /// Members.
    pub(crate) count: usize,
    /// Members with a weight above zero.
    pub(crate) live: usize,
    /// The sum of all weights.
    pub(crate) sum: u64,
    /// The largest weight (0 when there are none).
    pub(crate) max: u32,
    /// The smallest weight above zero (`u32::MAX` when none is).
    pub(crate) min_live: u32,
}

impl Weights {
    const EMPTY: Weights = Weights {
        count: 0,
        live: 0,
        sum: 0,
        max: 0,
        min_live: u32::MAX,
    };

    fn of(weight: u32) -> Self {
        Weights {
            count: 1,
            live: usize::from(weight > 0),
            sum: u64::from(weight),
            max: weight,
            min_live: if weight > 0 { weight } else { u32::MAX },
        }
    }

    fn and(self, other: Weights) -> Self {
        Weights {
            count: self.count + other.count,
            live: self.live + other.live,
            sum: self.sum + other.sum,
            max: self.max.max(other.max),
            min_live: self.min_live.min(other.min_live),
        }
    }

    /// Whether every member weighs the same and none is draining, or every
    /// one is draining (then they are all picked alike).
    pub(crate) fn uniform(&self) -> bool {
        self.live == 0 || (self.live == self.count && self.min_live == self.max)
    }
}

struct Node<S> {
    weights: Weights,
    kind: Kind<S>,
}

enum Kind<S> {
    Leaf(Vec<Member<S>>),
    Branch(Vec<Arc<Node<S>>>),
}

impl<S: Clone> Clone for Node<S> {
    fn clone(&self) -> Self {
        Node {
            weights: self.weights,
            kind: match &self.kind {
                Kind::Leaf(members) => Kind::Leaf(members.clone()),
                Kind::Branch(children) => Kind::Branch(children.clone()),
            },
        }
    }
}

impl<S> Node<S> {
    fn leaf(members: Vec<Member<S>>) -> Self {
        let weights = members.iter().fold(Weights::EMPTY, |w, m| {
            w.and(Weights::of(m.endpoint().weight()))
        });
        Node {
            weights,
            kind: Kind::Leaf(members),
        }
    }

    fn branch(children: Vec<Arc<Node<S>>>) -> Self {
        let weights = children
            .iter()
            .fold(Weights::EMPTY, |w, c| w.and(c.weights));
        Node {
            weights,
            kind: Kind::Branch(children),
        }
    }

    /// A node of height `shift / BITS` holding only `member`.
    fn path(shift: u32, member: Member<S>) -> Arc<Self> {
        Arc::new(if shift == 0 {
            let mut members = Vec::with_capacity(WIDTH);
            members.push(member);
            Node::leaf(members)
        } else {
            Node::branch(vec![Node::path(shift - BITS, member)])
        })
    }

    /// Recomputes the weights from the children, after one changed.
    fn reweigh(&mut self) {
        self.weights = match &self.kind {
            Kind::Leaf(members) => members.iter().fold(Weights::EMPTY, |w, m| {
                w.and(Weights::of(m.endpoint().weight()))
            }),
            Kind::Branch(children) => children
                .iter()
                .fold(Weights::EMPTY, |w, c| w.and(c.weights)),
        };
    }

    fn len(&self) -> usize {
        self.weights.count
    }

    /// The weights of the members at `lo..hi`, this node holding those
    /// from `base` on at height `shift / BITS`.
    fn weights_in(&self, shift: u32, base: usize, lo: usize, hi: usize) -> Weights {
        if lo <= base && base + self.len() <= hi {
            return self.weights;
        }
        match &self.kind {
            Kind::Leaf(members) => {
                let from = lo.saturating_sub(base).min(members.len());
                let to = hi.saturating_sub(base).min(members.len());
                members[from..to].iter().fold(Weights::EMPTY, |w, m| {
                    w.and(Weights::of(m.endpoint().weight()))
                })
            }
            Kind::Branch(children) => {
                let span = 1usize << shift;
                children
                    .iter()
                    .enumerate()
                    .map(|(k, c)| (base + k * span, c))
                    .filter(|&(b, _)| b < hi && b + span > lo)
                    .fold(Weights::EMPTY, |w, (b, c)| {
                        w.and(c.weights_in(shift - BITS, b, lo, hi))
                    })
            }
        }
    }
}

impl<S: Clone> Node<S> {
    /// Appends `member` as index `i`.
    fn push(node: &mut Arc<Self>, shift: u32, i: usize, member: Member<S>) {
        let n = Arc::make_mut(node);
        match &mut n.kind {
            Kind::Leaf(members) => members.push(member),
            Kind::Branch(children) => {
                let slot = (i >> shift) & MASK;
                match children.get_mut(slot) {
                    Some(child) => Node::push(child, shift - BITS, i, member),
                    None => children.push(Node::path(shift - BITS, member)),
                }
            }
        }
        n.reweigh();
    }

    /// Removes the last member, index `i`; `None` if the tree is not as
    /// long as that.
    fn pop(node: &mut Arc<Self>, shift: u32, i: usize) -> Option<Member<S>> {
        let n = Arc::make_mut(node);
        let member = match &mut n.kind {
            Kind::Leaf(members) => members.pop(),
            Kind::Branch(children) => {
                let slot = (i >> shift) & MASK;
                let child = children.get_mut(slot)?;
                let member = Node::pop(child, shift - BITS, i);
                if child.len() == 0 {
                    children.pop();
                }
                member
            }
        };
        n.reweigh();
        member
    }

    /// Puts `member` at index `i`, returning the one it replaces.
    fn set(node: &mut Arc<Self>, shift: u32, i: usize, member: Member<S>) -> Option<Member<S>> {
        let n = Arc::make_mut(node);
        let old = match &mut n.kind {
            Kind::Leaf(members) => members
                .get_mut(i & MASK)
                .map(|slot| std::mem::replace(slot, member)),
            Kind::Branch(children) => {
                let child = children.get_mut((i >> shift) & MASK)?;
                Node::set(child, shift - BITS, i, member)
            }
        };
        n.reweigh();
        old
    }
}

/// A snapshot's members: a persistent vector whose clones share their
/// nodes, and whose changes copy O(log N) of them. Indexed like a slice;
/// [`view`](MemberList::view) gives the [`Members`] a picker takes.
pub struct MemberList<S> {
    root: Arc<Node<S>>,
    /// `BITS` times the root's height (0: the root is a leaf).
    shift: u32,
}

impl<S> Clone for MemberList<S> {
    fn clone(&self) -> Self {
        MemberList {
            root: self.root.clone(),
            shift: self.shift,
        }
    }
}

impl<S> Default for MemberList<S> {
    fn default() -> Self {
        MemberList {
            root: Arc::new(Node::leaf(Vec::new())),
            shift: 0,
        }
    }
}

impl<S> fmt::Debug for MemberList<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.view().iter().map(Member::endpoint))
            .finish()
    }
}

impl<S> From<Vec<Member<S>>> for MemberList<S> {
    /// Builds the tree bottom up, in O(N).
    fn from(members: Vec<Member<S>>) -> Self {
        if members.len() <= WIDTH {
            return MemberList {
                root: Arc::new(Node::leaf(members)),
                shift: 0,
            };
        }
        let mut level: Vec<Arc<Node<S>>> = Vec::with_capacity(members.len().div_ceil(WIDTH));
        let mut members = members.into_iter().peekable();
        while members.peek().is_some() {
            level.push(Arc::new(Node::leaf(members.by_ref().take(WIDTH).collect())));
        }
        let mut shift = 0;
        while level.len() > 1 {
            shift += BITS;
            let mut children = level.into_iter().peekable();
            let mut up = Vec::new();
            while children.peek().is_some() {
                up.push(Arc::new(Node::branch(
                    children.by_ref().take(WIDTH).collect(),
                )));
            }
            level = up;
        }
        MemberList {
            root: level.pop().unwrap_or_default(),
            shift,
        }
    }
}

impl<S> Default for Node<S> {
    fn default() -> Self {
        Node::leaf(Vec::new())
    }
}

impl<S> FromIterator<Member<S>> for MemberList<S> {
    fn from_iter<I: IntoIterator<Item = Member<S>>>(iter: I) -> Self {
        iter.into_iter().collect::<Vec<_>>().into()
    }
}

impl<S> Index<usize> for MemberList<S> {
    type Output = Member<S>;

    /// Member `i`.
    ///
    /// # Panics
    ///
    /// When there are not more than `i` members, as a slice does.
    #[track_caller]
    fn index(&self, i: usize) -> &Member<S> {
        match self.get(i) {
            Some(m) => m,
            None => panic!("member {i} of {}", self.len()),
        }
    }
}

impl<'a, S> IntoIterator for &'a MemberList<S> {
    type Item = &'a Member<S>;
    type IntoIter = Iter<'a, S>;

    fn into_iter(self) -> Iter<'a, S> {
        self.iter()
    }
}

impl<S> MemberList<S> {
    /// How many members.
    pub fn len(&self) -> usize {
        self.root.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The members in order.
    pub fn iter(&self) -> Iter<'_, S> {
        self.view().iter()
    }

    /// The first member.
    pub fn first(&self) -> Option<&Member<S>> {
        self.get(0)
    }

    /// A copy of the members in a `Vec`.
    pub fn to_vec(&self) -> Vec<Member<S>>
    where
        S: Clone,
    {
        self.iter().cloned().collect()
    }

    /// Member `i`, if there are more than `i`.
    #[inline]
    pub fn get(&self, i: usize) -> Option<&Member<S>> {
        if i >= self.len() {
            return None;
        }
        let mut node = &*self.root;
        let mut shift = self.shift;
        loop {
            match &node.kind {
                Kind::Branch(children) => {
                    node = children.get((i >> shift) & MASK)?;
                    shift = shift.checked_sub(BITS)?;
                }
                Kind::Leaf(members) => return members.get(i & MASK),
            }
        }
    }

    /// The members of the leaf holding `i`, from `i` on.
    fn leaf_from(&self, i: usize) -> &[Member<S>] {
        let mut node = &*self.root;
        let mut shift = self.shift;
        loop {
            match &node.kind {
                Kind::Branch(children) => match children.get((i >> shift) & MASK) {
                    Some(child) if shift >= BITS => {
                        node = child;
                        shift -= BITS;
                    }
                    _ => return &[],
                },
                Kind::Leaf(members) => return members.get(i & MASK..).unwrap_or_default(),
            }
        }
    }

    /// Whether `other` is this very list (a clone of it, unchanged):
    /// then the two hold the same members, found in O(1).
    pub(crate) fn shares_nodes_with(&self, other: &MemberList<S>) -> bool {
        Arc::ptr_eq(&self.root, &other.root)
    }

    /// All the members, as the view a picker takes.
    pub fn view(&self) -> Members<'_, S> {
        Members {
            list: self,
            start: 0,
            len: self.len(),
        }
    }
}

impl<S: Clone> MemberList<S> {
    /// Appends `member`.
    pub(crate) fn push(&mut self, member: Member<S>) {
        let len = self.len();
        if len == WIDTH << self.shift {
            // Full: a new root above the old one.
            let old = std::mem::take(&mut self.root);
            self.root = Arc::new(Node::branch(vec![old]));
            self.shift += BITS;
        }
        Node::push(&mut self.root, self.shift, len, member);
    }

    /// Removes and returns the last member.
    pub(crate) fn pop(&mut self) -> Option<Member<S>> {
        let last = self.len().checked_sub(1)?;
        let member = Node::pop(&mut self.root, self.shift, last);
        // A root with one child gives way to it.
        while self.shift > 0 {
            let Kind::Branch(children) = &self.root.kind else {
                break;
            };
            if children.len() > 1 {
                break;
            }
            let child = children.first().cloned().unwrap_or_default();
            self.root = child;
            self.shift -= BITS;
        }
        member
    }

    /// Puts `member` at `i`, returning the member it replaces; `None` (and
    /// no change) when `i` is out of range.
    pub(crate) fn set(&mut self, i: usize, member: Member<S>) -> Option<Member<S>> {
        if i >= self.len() {
            return None;
        }
        Node::set(&mut self.root, self.shift, i, member)
    }

    /// Removes member `i` and moves the last member into its place.
    pub(crate) fn swap_remove(&mut self, i: usize) -> Option<Member<S>> {
        if i >= self.len() {
            return None;
        }
        let last = self.pop()?;
        if i == self.len() {
            return Some(last);
        }
        self.set(i, last)
    }
}

/// A run of a snapshot's members: what a [`Picker`](crate::balance::Picker)
/// picks from. `Copy`, like the slice it stands for; indexing costs a few
/// loads into a tree whose upper nodes stay in the cache.
pub struct Members<'a, S> {
    list: &'a MemberList<S>,
    start: usize,
    len: usize,
}

impl<S> Clone for Members<'_, S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S> Copy for Members<'_, S> {}

impl<S> fmt::Debug for Members<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.iter().map(Member::endpoint))
            .finish()
    }
}

impl<'a, S> Members<'a, S> {
    /// How many members.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Member `i`, if there are more than `i`.
    #[inline]
    pub fn get(&self, i: usize) -> Option<&'a Member<S>> {
        if i >= self.len {
            return None;
        }
        self.list.get(self.start + i)
    }

    /// The first member.
    pub fn first(&self) -> Option<&'a Member<S>> {
        self.get(0)
    }

    /// The members in order.
    pub fn iter(&self) -> Iter<'a, S> {
        Iter {
            list: self.list,
            next: self.start,
            end: self.start + self.len,
            leaf: [].iter(),
        }
    }

    /// The members at `range` of these, or `None` when it reaches past
    /// their end.
    pub fn get_range(&self, range: Range<usize>) -> Option<Members<'a, S>> {
        if range.start > range.end || range.end > self.len {
            return None;
        }
        Some(Members {
            list: self.list,
            start: self.start + range.start,
            len: range.end - range.start,
        })
    }

    /// The members' weight totals: O(1) for a whole snapshot, O(log N)
    /// for a run of one.
    pub(crate) fn weights(&self) -> Weights {
        if self.start == 0 && self.len == self.list.len() {
            return self.list.root.weights;
        }
        self.list
            .root
            .weights_in(self.list.shift, 0, self.start, self.start + self.len)
    }

    /// A copy of the members in a `Vec`.
    pub fn to_vec(&self) -> Vec<Member<S>>
    where
        S: Clone,
    {
        self.iter().cloned().collect()
    }
}

impl<S> Index<usize> for Members<'_, S> {
    type Output = Member<S>;

    /// Member `i`.
    ///
    /// # Panics
    ///
    /// When there are not more than `i` members, as a slice does.
    #[track_caller]
    fn index(&self, i: usize) -> &Member<S> {
        match self.get(i) {
            Some(m) => m,
            None => panic!("member {i} of {}", self.len),
        }
    }
}

impl<'a, S> IntoIterator for Members<'a, S> {
    type Item = &'a Member<S>;
    type IntoIter = Iter<'a, S>;

    fn into_iter(self) -> Iter<'a, S> {
        self.iter()
    }
}

/// The members of a [`Members`], in order.
pub struct Iter<'a, S> {
    list: &'a MemberList<S>,
    /// The index of the first member after `leaf`.
    next: usize,
    end: usize,
    leaf: std::slice::Iter<'a, Member<S>>,
}

impl<S> fmt::Debug for Iter<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Iter")
            .field("left", &(self.end - self.next + self.leaf.len()))
            .finish()
    }
}

impl<'a, S> Iterator for Iter<'a, S> {
    type Item = &'a Member<S>;

    #[inline]
    fn next(&mut self) -> Option<&'a Member<S>> {
        if let Some(m) = self.leaf.next() {
            return Some(m);
        }
        if self.next >= self.end {
            return None;
        }
        let leaf = self.list.leaf_from(self.next);
        let take = leaf.len().min(self.end - self.next);
        if take == 0 {
            self.next = self.end;
            return None;
        }
        self.next += take;
        self.leaf = leaf[..take].iter();
        self.leaf.next()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.end - self.next + self.leaf.len();
        (left, Some(left))
    }
}

impl<S> ExactSizeIterator for Iter<'_, S> {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::Endpoint;
    use crate::pool::StatsHandle;
    use tokio::time::Instant;

    fn member(i: usize, weight: u32) -> Member<u32> {
        let ip = [10, (i >> 16) as u8, (i >> 8) as u8, i as u8];
        let ep = Endpoint::new((ip, 80).into()).with_weight(weight);
        Member::new(ep, i as u32, StatsHandle::new(Instant::now()))
    }

    fn ids(list: &MemberList<u32>) -> Vec<u32> {
        list.view().iter().map(|m| *m.service()).collect()
    }

    fn check(list: &MemberList<u32>, model: &[(u32, u32)]) {
        assert_eq!(list.len(), model.len());
        assert_eq!(ids(list), model.iter().map(|m| m.0).collect::<Vec<_>>());
        for (i, (id, _)) in model.iter().enumerate() {
            assert_eq!(list.get(i).map(|m| *m.service()), Some(*id), "at {i}");
        }
        assert!(list.get(model.len()).is_none());
        let want = model
            .iter()
            .fold(Weights::EMPTY, |w, &(_, weight)| w.and(Weights::of(weight)));
        assert_eq!(list.view().weights(), want);
        // Every run's weights, at a few places.
        let n = model.len();
        for (lo, hi) in [(0, n / 2), (n / 3, n), (n / 4, n - n / 4), (1.min(n), n)] {
            let run = list.view().get_range(lo..hi).expect("in range");
            let want = model[lo..hi]
                .iter()
                .fold(Weights::EMPTY, |w, &(_, weight)| w.and(Weights::of(weight)));
            assert_eq!(run.weights(), want, "{lo}..{hi}");
            assert_eq!(run.iter().len(), hi - lo);
        }
    }

    #[test]
    fn pushes_pops_sets_and_swap_removes_follow_a_vec() {
        let mut list = MemberList::default();
        let mut model: Vec<(u32, u32)> = Vec::new();
        check(&list, &model);
        // Past two levels (32 * 32) and back.
        for i in 0..1100 {
            let w = (i % 7) as u32;
            list.push(member(i, w));
            model.push((i as u32, w));
            if i % 97 == 0 || i == 31 || i == 32 || i == 1023 || i == 1024 {
                check(&list, &model);
            }
        }
        check(&list, &model);
        let before = list.clone();
        let frozen = model.clone();
        for (k, at) in [5usize, 1023, 0, 700, 1050].into_iter().enumerate() {
            let w = 10 + k as u32;
            let old = list.set(at, member(5000 + k, w)).map(|m| *m.service());
            assert_eq!(old, Some(model[at].0));
            model[at] = (5000 + k as u32, w);
        }
        check(&list, &model);
        for at in [17usize, 1024, 0, 500, 1090] {
            let at = at.min(model.len() - 1);
            let gone = list.swap_remove(at).map(|m| *m.service());
            assert_eq!(gone, Some(model.swap_remove(at).0));
            check(&list, &model);
        }
        while model.len() > 20 {
            assert_eq!(list.pop().map(|m| *m.service()), model.pop().map(|m| m.0));
        }
        check(&list, &model);
        assert_eq!(list.shift, 0, "the tree shrinks back to a leaf");
        while list.pop().is_some() {}
        check(&list, &[]);
        assert!(list.set(0, member(0, 1)).is_none());
        assert!(list.swap_remove(0).is_none());
        // The clone taken before saw none of it.
        check(&before, &frozen);
    }

    #[test]
    fn a_list_built_from_a_vec_is_the_vec() {
        for n in [0usize, 1, 31, 32, 33, 1024, 1025, 40_000] {
            let model: Vec<(u32, u32)> = (0..n).map(|i| (i as u32, (i % 3) as u32)).collect();
            let list = MemberList::from(
                model
                    .iter()
                    .map(|&(i, w)| member(i as usize, w))
                    .collect::<Vec<_>>(),
            );
            check(&list, &model);
            // And it grows like one that was pushed.
            let mut grown = list.clone();
            grown.push(member(n, 2));
            let mut more = model.clone();
            more.push((n as u32, 2));
            check(&grown, &more);
        }
    }

    #[test]
    fn a_change_copies_only_its_path() {
        let list = MemberList::from((0..10_000).map(|i| member(i, 1)).collect::<Vec<_>>());
        let mut next = list.clone();
        next.set(5_000, member(99_999, 2));
        let (Kind::Branch(a), Kind::Branch(b)) = (&list.root.kind, &next.root.kind) else {
            panic!("10 000 members need branches");
        };
        let shared = a.iter().zip(b).filter(|(x, y)| Arc::ptr_eq(x, y)).count();
        assert_eq!(shared, a.len() - 1, "one child of the root was copied");
        assert_eq!(list.get(5_000).map(|m| *m.service()), Some(5_000));
        assert_eq!(next.get(5_000).map(|m| *m.service()), Some(99_999));
    }

    #[test]
    fn weights_say_when_a_set_is_uniform() {
        let w = |ws: &[u32]| {
            MemberList::from(
                ws.iter()
                    .enumerate()
                    .map(|(i, &w)| member(i, w))
                    .collect::<Vec<_>>(),
            )
            .view()
            .weights()
        };
        assert!(w(&[]).uniform());
        assert!(w(&[3, 3, 3]).uniform());
        assert!(w(&[0, 0]).uniform());
        assert!(!w(&[3, 0, 3]).uniform());
        assert!(!w(&[1, 2]).uniform());
        let x = w(&[0, 4, 2]);
        assert_eq!((x.count, x.live, x.sum, x.max, x.min_live), (3, 2, 6, 4, 2));
    }
}
