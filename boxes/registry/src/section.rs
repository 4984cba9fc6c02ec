//! Lookup sections and grace periods (R6): a lookup that goes on to read what it found opens a
//! section; a withdrawal waits, before the memory is unmapped or reused, until every section
//! that could still see the region has closed.
//!
//! The protocol is a two-phase counter, as in sleepable RCU. Readers count themselves in one of
//! two counters of a stripe (chosen by the caller, usually from its thread's heap) according to
//! the parity of an epoch; a grace period (writers serialised by a small lock) advances the
//! epoch, so new sections count in the other phase, and waits for the old phase's counters to
//! drain. Every step is an atomic read-modify-write or an acquire load, so the argument needs
//! no `SeqCst` and no fence:
//! - A reader increments its counter (`Acquire`), then loads the epoch again: if it moved, the
//!   reader leaves the counter and starts over. So a section that stays open counted in the
//!   phase of the epoch it saw *after* its increment.
//! - The grace period advances the epoch (`AcqRel`), then reads each counter of the old phase
//!   with a read-modify-write (`AcqRel`) until it reads zero.
//! - If the grace period's read-modify-write of a counter comes first in that counter's
//!   modification order, the reader's increment reads from it and synchronises with it: the
//!   withdrawal, the epoch advance and everything before them happen before the reader's
//!   second epoch load, which therefore sees the new epoch, and the reader starts over in a
//!   section whose lookups see the withdrawal (R2). If the reader's increment comes first, the
//!   grace period reads it and waits until it reads zero, which it can only read after the
//!   reader's decrement (`Release`): the reader's reads happen before whatever follows the
//!   grace period (the unmap).
//! - Writers are serialised, so a reader that saw epoch `e` at both loads is waited for by the
//!   grace period that advances `e`, which ends before any later one starts.
//!
//! The cost to a reader is two uncontended atomic additions on its stripe's cache line and two
//! loads of the epoch (which changes only when a region is withdrawn); a grace period costs one
//! read-modify-write per stripe when no section is open.
use crate::sync::{spin, AtomicUsize, Ordering};

/// Counter stripes: sections of different threads count on different cache lines.
#[cfg(not(loom))]
pub const STRIPES: usize = 32;
#[cfg(loom)]
pub const STRIPES: usize = 2;

/// Whether a reader checks the epoch again after counting itself in. The seeded bug
/// `section_no_recheck` does not: a reader that stalls between its first epoch load and its
/// increment counts in a phase that a later grace period does not wait for.
const RECHECK: bool = !cfg!(hakmem_seeded_bug = "section_no_recheck");

/// One stripe's counters of open sections, by the parity of the epoch they entered in.
#[repr(align(128))]
struct Stripe {
    open: [AtomicUsize; 2],
}

/// The open lookup sections, and the grace periods that wait for them.
pub(crate) struct Sections {
    epoch: AtomicUsize,
    /// 1 while a grace period runs (writers are serialised).
    writer: AtomicUsize,
    stripes: [Stripe; STRIPES],
}

/// An open lookup section: while it lives, no region its lookups found is unmapped or reused
/// (R6). Closed when dropped; a section that is never dropped (`mem::forget`) makes every later
/// withdrawal wait forever.
#[must_use = "the section closes when this is dropped"]
pub struct Section<'a> {
    count: &'a AtomicUsize,
}

impl Drop for Section<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Release);
    }
}

impl Sections {
    pub(crate) fn new() -> Self {
        Self {
            epoch: AtomicUsize::new(0),
            writer: AtomicUsize::new(0),
            stripes: core::array::from_fn(|_| Stripe {
                open: [AtomicUsize::new(0), AtomicUsize::new(0)],
            }),
        }
    }

    /// Opens a section on stripe `hint % STRIPES`.
    #[inline(always)]
    pub(crate) fn enter(&self, hint: usize) -> Section<'_> {
        let stripe = &self.stripes[hint % STRIPES];
        loop {
            let e = self.epoch.load(Ordering::Acquire);
            let count = &stripe.open[e & 1];
            count.fetch_add(1, Ordering::Acquire);
            if !RECHECK || self.epoch.load(Ordering::Acquire) == e {
                return Section { count };
            }
            count.fetch_sub(1, Ordering::Release);
        }
    }

    /// Waits until every section that was open when this was called has closed. Must not be
    /// called with a section open on this thread (it would wait for itself).
    pub(crate) fn grace(&self) {
        while self
            .writer
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            spin();
        }
        let old = self.epoch.fetch_add(1, Ordering::AcqRel) & 1;
        for stripe in &self.stripes {
            while stripe.open[old].fetch_add(0, Ordering::AcqRel) != 0 {
                spin();
            }
        }
        self.writer.store(0, Ordering::Release);
    }

    /// Forgets every section and grace period (a forked child: only the forking thread runs,
    /// and it is in neither).
    pub(crate) fn reset(&self) {
        self.writer.store(0, Ordering::Relaxed);
        for stripe in &self.stripes {
            for c in &stripe.open {
                c.store(0, Ordering::Relaxed);
            }
        }
    }
}
