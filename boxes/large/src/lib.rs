//! # hakmem-large: the large tier
//!
//! One user block per dedicated region, reused through the lru.
//!
//! A freed region goes to the lru with its pages, so the next large request that fits takes it
//! back without a page fault (the lru splits a much larger one at a 2 MiB step); the lru gives
//! the pages back once the program has stopped using it for its purge delay, or sooner past its
//! resident budget, which follows the program's recent large working set (lru C4, C8). Cached
//! regions that lie end to end are merged (lru C10), and regions apart are joined by moving their
//! pages onto one new mapping (lru C11), so a request larger than any one freed block is still
//! served by the pages of blocks freed before it, without faulting new ones in.
//!
//! Regions of 2 MiB or more are advised for transparent huge pages ([`Os::advise_huge`]) when
//! they are mapped or grown: a filled 20 MiB block then costs 10 page faults instead of 5120.
//! (With THP in `madvise` mode, as on most distributions, nothing else asks for them; `never`
//! turns this off.) So that their last huge page is whole too, their lengths are whole 2 MiB
//! steps: on growth always (a growing block tends to grow on), for a new block when that adds
//! at most half.
//!
//! Blocks are counted in the large row ([`LARGE_ROW`]) of the [`Row`] the caller passes, as the
//! medium tier's are; a slow path runs the medium tier's purge tick when it is due, and a
//! mapping the OS refuses is retried once every cached empty region is given back
//! ([`map_or_collect`]).
//!
//! ## Invariants
//! - **LG1 (one region, one block).** A large block is the only block of its region, whose
//!   header (superslab's `LargeHeader`) records the region's whole length; the block is
//!   registered as large before its pointer is returned and unregistered before its region goes
//!   to the lru.
//! - **LG2 (whole steps).** A region of 2 MiB or more is advised for huge pages when mapped or
//!   grown, and its length is a whole 2 MiB step when grown, and when new if that adds at most
//!   half.
#![deny(unsafe_op_in_unsafe_fn)]

use core::ptr::null_mut;
use hakmem_hot_heap::Ctx;
use hakmem_lru::now_ns;
use hakmem_medium::{count, purge_if_due};
use hakmem_stats::Event;
use hakmem_superslab::{LargeHeader, LargeLayout, Os, SS_SIZE};

pub use hakmem_medium::{map_or_collect, Row, LARGE_ROW};

/// The README's examples, compiled and run as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// A block of `size` bytes aligned to `align`, zeroed when `zero`, counted in `row`; null when
/// the OS refuses.
#[inline(never)]
pub fn alloc(ctx: &Ctx, row: Row<'_>, size: usize, align: usize, zero: bool) -> *mut u8 {
    let Some(layout) = LargeLayout::new(size, align, ctx.env().os.page_size()) else {
        return null_mut();
    };
    let env = ctx.env();
    let layout = LargeLayout {
        len: whole_steps(layout.len),
        ..layout
    };
    // Cached regions are 2 MiB-aligned: they serve any alignment up to that.
    let reused = if layout.align == SS_SIZE {
        ctx.lru.take(env.stats, layout.len, false, now_ns())
    } else {
        None
    };
    // A reused region may be up to twice the length asked for: the header records all of it.
    let layout = LargeLayout {
        len: reused.map_or(layout.len, |r| r.len),
        ..layout
    };
    let (region, zeroed) = match reused {
        Some(r) => (r.base, r.zeroed),
        None => match map_or_collect(ctx, layout.len, layout.align, layout.offset) {
            Some(p) => {
                huge(env.os, p.as_ptr() as usize, layout.len);
                (p, true)
            }
            None => return null_mut(),
        },
    };
    // SAFETY: a whole, unused region of the layout's size and alignment; the layout is
    // `LargeLayout::new`'s with a longer `len`, so its user offset still lies inside.
    let user = match unsafe { LargeHeader::init(&env, region, layout) } {
        Ok(u) => u.as_ptr(),
        Err(region) => {
            // SAFETY: never published.
            unsafe { env.os.unmap(region, layout.len, env.stats) };
            return null_mut();
        }
    };
    if zero && !zeroed {
        // SAFETY: `size` bytes from `user` lie in the region.
        unsafe { user.write_bytes(0, size) };
    }
    env.stats.event(Event::LargeAlloc, layout.len);
    count(ctx, row, true);
    purge_if_due(ctx);
    user
}

/// A new region's length rounded up to a whole 2 MiB step when that adds at most half: always
/// from 4 MiB on, and a block of 1.33..2 MiB gets a whole 2 MiB region. Its last huge page is
/// then whole: one page fault instead of up to 511 of 4 KiB, for at most half again of resident
/// memory once the block's end is touched (at most 2 MiB, the tail's huge page). Regions of
/// whole steps also tile: the OS layer places each new mapping right below the last, so regions
/// mapped one after another lie end to end with no gap, and once freed they merge in the lru
/// (C10) into one range a larger block can reuse.
fn whole_steps(len: usize) -> usize {
    match len.checked_next_multiple_of(SS_SIZE) {
        Some(up) if up - len <= len / 2 => up,
        _ => len,
    }
}

/// Grows a large block to `size` bytes by moving its pages; the block's new address, or `None`
/// when the OS cannot (the caller then copies).
///
/// # Safety
/// `base` is a live large region whose user block the caller holds.
#[inline(never)]
pub unsafe fn grow(ctx: &Ctx, base: usize, size: usize) -> Option<*mut u8> {
    let env = ctx.env();
    // Read here; the header may be rewritten below, so no reference to it is held across that.
    let (user_offset, len) = {
        // SAFETY: the caller's live region.
        let h = unsafe { LargeHeader::at(base) };
        (h.user_offset, h.len)
    };
    // First the cached region right after the block, if there is one (a split left it there):
    // growing over it costs no system call, and its pages may still be resident.
    let page = env.os.page_size();
    let need = user_offset.checked_add(size)?.checked_add(page - 1)? & !(page - 1);
    if need > len && (base + len).is_multiple_of(SS_SIZE) {
        if let Some(r) = ctx.lru.take_at(env.stats, base + len, need - len, now_ns()) {
            // SAFETY: the caller holds the block and no reference to its header; the range
            // after it is ours, just taken out of the lru, whole pages, published nowhere.
            if unsafe { LargeHeader::absorb(base, &env, r.len) } {
                huge(env.os, base, len + r.len);
                // No system call, so no `Mremap` event: counted as the region handed back and
                // handed out grown, so that the live bytes stay right.
                env.stats.event(Event::LargeFree, len);
                env.stats.event(Event::LargeAlloc, len + r.len);
                // SAFETY: still the caller's live region.
                return Some(unsafe { LargeHeader::at(base) }.user() as *mut u8);
            }
            // SAFETY: still retired and unused: back to the cache.
            unsafe { ctx.lru.put(env.stats, r.base, r.len, now_ns()) };
        }
    }
    // Past 2 MiB, the pages move and grow to a whole 2 MiB step: the region's last huge page is
    // then whole, so the next growth faults in huge pages only. (A block of 2^k bytes ends a
    // header past a 2 MiB boundary; that 2 MiB would otherwise be faulted in 4 KiB pages.)
    let size = if need > SS_SIZE {
        need.checked_next_multiple_of(SS_SIZE)? - user_offset
    } else {
        size
    };
    // SAFETY: forwarded.
    let h = unsafe { LargeHeader::at(base).grow(&env, size) }?;
    // The pages grown are the working set's too (lru C4): the cache keeps fewer.
    ctx.lru.lend(env.stats, h.len - len, now_ns());
    huge(env.os, h as *const LargeHeader as usize, h.len);
    Some(h.user() as *mut u8)
}

/// Advises a region of 2 MiB or more, mapped or grown just now, for huge pages.
fn huge(os: &dyn Os, base: usize, len: usize) {
    if len >= SS_SIZE {
        if let Some(p) = core::ptr::NonNull::new(base as *mut u8) {
            // SAFETY: a region of `os` that the caller holds (a block's, or one not yet
            // published).
            unsafe { os.advise_huge(p, len) };
        }
    }
}

/// Gives a large block back, counted in `row`.
#[inline(never)]
///
/// # Safety
/// `h` is the header of a live large region whose user block the caller holds and gives up.
pub unsafe fn free(ctx: &Ctx, row: Row<'_>, h: &LargeHeader) {
    let env = ctx.env();
    // SAFETY: forwarded.
    let (base, len) = unsafe { h.retire(&env) };
    env.stats.event(Event::LargeFree, len);
    count(ctx, row, false);
    // SAFETY: retired: unregistered, and nothing refers to it.
    unsafe { ctx.lru.put(env.stats, base, len, now_ns()) };
    purge_if_due(ctx);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_steps_round_up_only_when_that_adds_at_most_half() {
        const MIB: usize = 1 << 20;
        // Below 4/3 MiB, rounding to 2 MiB would add more than half: left alone.
        assert_eq!(whole_steps(MIB), MIB);
        assert_eq!(whole_steps(4 * MIB / 3 - 4096), 4 * MIB / 3 - 4096);
        // From 4/3 MiB up to a step, a whole step.
        assert_eq!(whole_steps(4 * MIB / 3 + 4096), SS_SIZE);
        assert_eq!(whole_steps(SS_SIZE), SS_SIZE);
        // From 4 MiB on, always the next step.
        assert_eq!(whole_steps(4 * MIB + 1), 6 * MIB);
        assert_eq!(whole_steps(20 * MIB + 4096), 22 * MIB);
        // No overflow at the top of the address space.
        assert_eq!(whole_steps(usize::MAX - 1), usize::MAX - 1);
    }

    #[test]
    fn whole_steps_never_shrink_and_add_at_most_half() {
        for len in (4096..64 * SS_SIZE).step_by(4096 * 7) {
            let up = whole_steps(len);
            assert!(up >= len && up - len <= len / 2, "{len} -> {up}");
            assert!(up == len || up.is_multiple_of(SS_SIZE), "{len} -> {up}");
        }
    }
}
