//! Adaptive thread-list bounds (H11): a class whose list keeps overflowing gets a larger bound,
//! within a per-heap budget; a class that has been quiet for a while gets its bound halved back
//! toward the route box's base (or at once, if another class needs its budget), and then gives
//! its free blocks back to its slabs.
use super::*;

/// Overflows of a class's list in a row (since its bound last changed) that grow its bound.
pub(crate) const GROW_AFTER: u8 = 4;
/// Overflows count as in a row when at most this many slow-path events lie between them: a
/// class whose list overflows now and then, among other classes' refills, does not grow.
pub(crate) const GROW_WINDOW: u32 = 8;
/// The largest bound a list grows to, in blocks.
pub(crate) const MAX_LIST_BLOCKS: u32 = 2048;
const _: () = assert!(
    MAX_LIST_BLOCKS <= hakmem_tls_sll::MAX_CAP,
    "a bound the lists can hold"
);
/// The largest bound a list grows to, in bytes of blocks.
pub(crate) const MAX_LIST_BYTES: usize = 256 * 1024;
/// Bytes of list bound a heap may hold beyond the base bounds, over every class (H11).
pub(crate) const ADAPT_BUDGET: usize = 256 * 1024;
/// Slow-path events between two looks for quiet classes.
pub(crate) const DECAY_EVERY: u32 = 64;
/// Slow-path events of the heap without one of a class after which the class is quiet: a grown
/// bound is halved, and another class may take its budget.
pub(crate) const QUIET: u32 = 256;
/// Slow-path events of the heap without one of a class at its base bound after which it gives
/// its free blocks back to its slabs. Large classes make many events (a refill of a 2-block
/// list moves one block), so a small class in steady use can go a few hundred events without
/// one: at [`QUIET`], fragmentation's small classes were drained and refilled again and again
/// (docs/results/2026-12-07-random-frees.md).
pub(crate) const DRAIN_QUIET: u32 = 2048;

/// The adaptive bounds' state, per heap.
pub(crate) struct Adapt {
    /// Slow-path events so far (the clock of decay; wraps).
    tick: u32,
    /// Bytes of bound granted beyond the base bounds, over every class (at most ADAPT_BUDGET).
    extra: usize,
    /// Per class: overflows in a row since the bound last changed.
    overflows: [u8; CLASSES],
    /// Per class: the tick of the last overflow.
    last_overflow: [u32; CLASSES],
    /// Per class: the tick of the last slow-path event.
    last: [u32; CLASSES],
    /// Classes that may hold something to decay (a grown bound, blocks on the list or in the
    /// cache, a current slab): set by every slow-path event of the class, cleared when a decay
    /// finds nothing left. So a decay looks at the classes in use, not at every class.
    active: [u64; 2],
    /// Per class: the overflowing frees still to go straight to their slabs (H20).
    pub(crate) direct: [u16; CLASSES],
}

const _: () = assert!(CLASSES <= 128, "the active classes fit two words");

impl Adapt {
    pub(crate) const fn new() -> Self {
        Self {
            tick: 0,
            extra: 0,
            overflows: [0; CLASSES],
            last_overflow: [0; CLASSES],
            last: [0; CLASSES],
            active: [0; 2],
            direct: [0; CLASSES],
        }
    }
}

impl Heap {
    /// Bytes of list bound this heap holds beyond the base bounds (H11).
    pub fn adapt_extra_bytes(&self) -> usize {
        self.adapt.extra
    }

    /// The current bound of the thread list of `class`.
    pub fn list_cap(&self, class: SizeClass) -> u32 {
        self.sll.cap(class.index())
    }

    /// A slow-path event: advances the clock and, every [`DECAY_EVERY`] events, decays each
    /// class that has had no slow-path event for [`QUIET`] events ([`Heap::decay`]).
    pub(crate) fn adapt_tick(&mut self) -> u32 {
        let a = &mut self.adapt;
        a.tick = a.tick.wrapping_add(1);
        let now = a.tick;
        if now.is_multiple_of(DECAY_EVERY) {
            self.decay(now);
        }
        now
    }

    /// A slow-path event of `class` (a refill of its list, or an overflow): the class is in use.
    pub(crate) fn mark_active(&mut self, class: SizeClass, now: u32) {
        let i = class.index();
        self.adapt.last[i] = now;
        self.adapt.active[i / 64] |= 1 << (i % 64);
    }

    /// Decays every quiet class (no slow-path event for [`QUIET`] events), one step each: a
    /// grown bound is halved; a class at its base bound gives every block on its thread list
    /// and in the cache back to its slabs, and its current slab too once that is empty (H4, H11).
    pub(crate) fn decay(&mut self, now: u32) {
        for w in 0..2 {
            let mut m = self.adapt.active[w];
            while m != 0 {
                let i = w * 64 + m.trailing_zeros() as usize;
                m &= m - 1;
                // Every bit set is a class's (`mark_active`).
                let Some(c) = SizeClass::new(i) else {
                    continue;
                };
                let age = now.wrapping_sub(self.adapt.last[i]);
                if age < QUIET {
                    continue;
                }
                if self.is_grown(c) {
                    self.shrink(c);
                    // Wait another quiet period before the next step.
                    self.adapt.last[i] = now;
                    continue;
                }
                if age < DRAIN_QUIET {
                    continue;
                }
                self.drain_class(c);
                if self.sll.is_empty(i) && self.cache.is_empty(i) && self.current[i].is_null() {
                    self.adapt.active[w] &= !(1 << (i % 64));
                }
            }
        }
    }

    /// Gives every block of `class` on the thread list and in the cache back to its slab, and
    /// the current slab to its superslab if that left it empty.
    pub(crate) fn drain_class(&mut self, class: SizeClass) {
        let chain = self.take_list(class, u32::MAX);
        self.dispose_chain(class, chain, false);
        self.flush_cache(class, self.cache.len(class.index()));
        if let Some(slab) = self.current(class) {
            // SAFETY: the current slab is ours (H3).
            if unsafe { slab.is_empty() } {
                // SAFETY: a slab's metadata lives in its superslab's header, live while ours.
                let ss = unsafe { Superslab::of(core::ptr::from_ref(slab).cast()) };
                self.free_slab(ss, class, slab);
            }
        }
    }

    /// The thread list of `class` is full (not in check mode): counts the overflow (a new
    /// count if the last one was more than [`GROW_WINDOW`] events ago) and, the
    /// [`GROW_AFTER`]th in a row, tries to double the bound.
    pub(crate) fn on_overflow(&mut self, class: SizeClass) {
        let now = self.adapt_tick();
        self.mark_active(class, now);
        let a = &mut self.adapt;
        let i = class.index();
        if now.wrapping_sub(a.last_overflow[i]) > GROW_WINDOW {
            a.overflows[i] = 0;
        }
        a.last_overflow[i] = now;
        a.overflows[i] = a.overflows[i].saturating_add(1);
        if a.overflows[i] >= GROW_AFTER {
            a.overflows[i] = 0;
            self.grow(class);
        }
    }

    /// Doubles the bound of `class` within [`MAX_LIST_BLOCKS`], [`MAX_LIST_BYTES`] and the
    /// heap's [`ADAPT_BUDGET`], taking budget from quiet grown classes if needed.
    /// True when it grew.
    pub(crate) fn grow(&mut self, class: SizeClass) -> bool {
        let cap = self.sll.cap(class.index());
        let bs = class.size();
        let new = cap.saturating_mul(2);
        if cap == 0 || new > MAX_LIST_BLOCKS || new as usize * bs > MAX_LIST_BYTES {
            return false;
        }
        let add = (new - cap) as usize * bs;
        if add > ADAPT_BUDGET {
            return false;
        }
        while self.adapt.extra + add > ADAPT_BUDGET {
            let Some(q) = self.quietest_grown(class) else {
                return false;
            };
            self.shrink(q);
        }
        if self.sll.set_cap(class.index(), new).is_err() {
            return false;
        }
        self.adapt.extra += add;
        true
    }

    /// True when the bound of `class` is above its base.
    fn is_grown(&self, class: SizeClass) -> bool {
        self.sll.cap(class.index()) > class.list_cap()
    }

    /// The grown class other than `except` that has been quiet longest, if one has been quiet
    /// for [`QUIET`] events: classes in use do not take budget from each other.
    fn quietest_grown(&self, except: SizeClass) -> Option<SizeClass> {
        let a = &self.adapt;
        let mut best: Option<(u32, SizeClass)> = None;
        for c in SizeClass::all().filter(|&c| c != except && self.is_grown(c)) {
            let age = a.tick.wrapping_sub(a.last[c.index()]);
            if age >= QUIET && best.is_none_or(|(b, _)| age > b) {
                best = Some((age, c));
            }
        }
        best.map(|(_, c)| c)
    }

    /// Halves the bound of grown `class` (not below its base), spilling the blocks beyond the
    /// new bound into the cache and to their slabs.
    pub(crate) fn shrink(&mut self, class: SizeClass) {
        let base = class.list_cap();
        let cap = self.sll.cap(class.index());
        let new = (cap / 2).max(base);
        if new >= cap {
            return;
        }
        let len = self.sll.len(class.index());
        if len > new {
            let chain = self.take_list(class, len - new);
            self.dispose_chain(class, chain, true);
        }
        if self.sll.set_cap(class.index(), new).is_ok() {
            let a = &mut self.adapt;
            a.extra -= (cap - new) as usize * class.size();
            a.overflows[class.index()] = 0;
        }
    }
}
