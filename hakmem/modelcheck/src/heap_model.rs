//! The model check of [`hakmem::Heap`]: a case's operations run on one private heap, through
//! its `allocator_api2` [`Allocator`], against a reference model of its live blocks.
//!
//! ## What a heap case checks
//! MC1 to MC4 as for the global heap (no overlap, alignment, contents, zeroing), and:
//! - **MC7 (heap counts).** After every operation that the heap's counts follow (allocations,
//!   frees, resizes, collects, resets, and frees by another thread once the heap has drained
//!   them), [`hakmem::Heap::stats`]'s live blocks are the model's live small blocks, and its
//!   live bytes are at least their sizes.
//! - **MC8 (drop and reset).** After [`hakmem::Heap::reset`], or a drop and a new heap, the heap
//!   holds nothing (no live block, nothing mapped), the small blocks are gone from the model,
//!   and the big blocks (served by the global tiers) are still live with their contents.
//! - **MC9 (collect).** After [`hakmem::Heap::collect`], a heap with no live small block maps
//!   nothing.
//!
//! Each case has a heap of its own and checks the heap's own counts, which no other thread
//! changes, so cases may run alongside other tests.
use crate::{overlaps, pattern, Failure};
use allocator_api2::alloc::Allocator;
use hakmem::Heap;
use std::alloc::Layout;
use std::ptr::NonNull;

/// The largest request the small tier serves (`hakmem`'s route box): bigger ones, or ones
/// aligned beyond it, are served by the global tiers and not counted by the heap.
const MAX_SMALL: usize = 64 << 10;

/// One operation of a heap case. `pick` names one of the live blocks (modulo their number; an
/// operation with no live block does nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeapOp {
    /// `allocate` (or `allocate_zeroed`) of `size` bytes aligned to `align`.
    Alloc {
        /// Bytes asked for (at least 1).
        size: usize,
        /// Alignment asked for (a power of two).
        align: usize,
        /// Whether through `allocate_zeroed`.
        zeroed: bool,
    },
    /// `deallocate` of a block.
    Free {
        /// Which block.
        pick: u16,
    },
    /// `grow` or `shrink` of a block to `size` bytes (same alignment).
    Resize {
        /// Which block.
        pick: u16,
        /// The new size (at least 1).
        size: usize,
    },
    /// A block freed by another thread with the global free (`hakmem::raw::free`): a remote
    /// free for a small block.
    FreeElsewhere {
        /// Which block.
        pick: u16,
    },
    /// [`Heap::collect`].
    Collect,
    /// [`Heap::reset`].
    Reset,
    /// The heap dropped and a new one made.
    Renew,
}

/// A live block of the heap case's model.
#[derive(Clone, Copy, Debug)]
struct Block {
    id: u64,
    ptr: NonNull<u8>,
    size: usize,
    align: usize,
}

impl Block {
    fn layout(&self) -> Layout {
        Layout::from_size_align(self.size, self.align).expect("model layouts are valid")
    }

    /// Served by the heap's own superslabs (and counted by it).
    fn small(&self) -> bool {
        self.size <= MAX_SMALL && self.align <= MAX_SMALL
    }

    /// # Safety
    /// The block is live.
    unsafe fn bytes<'a>(self) -> &'a mut [u8] {
        // SAFETY: live, `size` bytes, and the model's alone.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.size) }
    }

    /// MC3: the block still holds its pattern.
    fn check(&self, when: &str) -> Result<(), Failure> {
        // SAFETY: live.
        match pattern::first_mismatch(self.id, unsafe { self.bytes() }) {
            None => Ok(()),
            Some(at) => Err(Failure(format!(
                "{when}: block {} ({} B at {:p}) changed at byte {at}",
                self.id, self.size, self.ptr
            ))),
        }
    }
}

/// The model's state for one case.
struct State {
    heap: Heap,
    live: Vec<Block>,
    next_id: u64,
}

impl State {
    fn pick(&self, pick: u16) -> Option<usize> {
        (!self.live.is_empty()).then(|| pick as usize % self.live.len())
    }

    /// MC7.
    fn check_counts(&self, step: usize) -> Result<(), Failure> {
        let s = self.heap.stats();
        let small: Vec<&Block> = self.live.iter().filter(|b| b.small()).collect();
        let bytes: usize = small.iter().map(|b| b.size).sum();
        if s.live_blocks() != small.len() as u64 || s.live_bytes() < bytes as u64 {
            return Err(Failure(format!(
                "op {step}: the heap counts {} live blocks of {} bytes, the model {} of {bytes}",
                s.live_blocks(),
                s.live_bytes(),
                small.len()
            )));
        }
        Ok(())
    }

    /// MC8: what a reset or renewal leaves.
    fn after_reset(&mut self, step: usize) -> Result<(), Failure> {
        self.live.retain(|b| !b.small());
        let s = self.heap.stats();
        if s.live_blocks() != 0 || s.mapped_bytes() != 0 {
            return Err(Failure(format!("op {step}: a new or reset heap holds {s}")));
        }
        for b in &self.live {
            b.check(&format!("op {step}: a big block after the reset"))?;
        }
        Ok(())
    }
}

/// Runs one heap case; the first failed check ends it. Every block left live is freed at the
/// end (the small ones with the heap's drop).
pub fn run_heap_case(ops: &[HeapOp]) -> Result<(), Failure> {
    let mut st = State {
        heap: Heap::new(),
        live: Vec::with_capacity(ops.len()),
        next_id: 0,
    };
    let result = run(&mut st, ops);
    for b in st.live.drain(..).filter(|b| !b.small()) {
        // SAFETY: a live big block of the global tiers, with its layout.
        unsafe { (&st.heap).deallocate(b.ptr, b.layout()) };
    }
    result
}

fn run(st: &mut State, ops: &[HeapOp]) -> Result<(), Failure> {
    for (step, &op) in ops.iter().enumerate() {
        match op {
            HeapOp::Alloc {
                size,
                align,
                zeroed,
            } => {
                let layout = Layout::from_size_align(size, align).expect("valid layouts");
                let a = &st.heap;
                let got = if zeroed {
                    a.allocate_zeroed(layout)
                } else {
                    a.allocate(layout)
                };
                let Ok(got) = got else {
                    return Err(Failure(format!("op {step}: {size} B failed")));
                };
                let ptr = got.cast::<u8>();
                if got.len() < size || !(ptr.as_ptr() as usize).is_multiple_of(align) {
                    return Err(Failure(format!(
                        "op {step}: {size} B aligned to {align}: {} B at {ptr:p}",
                        got.len()
                    )));
                }
                let b = Block {
                    id: st.next_id,
                    ptr,
                    size,
                    align,
                };
                st.next_id += 1;
                // SAFETY: just allocated, `size` bytes.
                let bytes = unsafe { b.bytes() };
                if zeroed && bytes.iter().any(|&x| x != 0) {
                    return Err(Failure(format!("op {step}: allocate_zeroed not zeroed")));
                }
                pattern::fill(b.id, bytes, 0);
                st.live.push(b);
                st.check_counts(step)?;
            }
            HeapOp::Free { pick } => {
                let Some(i) = st.pick(pick) else { continue };
                let b = st.live.swap_remove(i);
                b.check(&format!("op {step}: before its free"))?;
                // SAFETY: live, of this heap, with its layout.
                unsafe { (&st.heap).deallocate(b.ptr, b.layout()) };
                st.check_counts(step)?;
            }
            HeapOp::Resize { pick, size } => {
                let Some(i) = st.pick(pick) else { continue };
                let b = st.live[i];
                b.check(&format!("op {step}: before its resize"))?;
                let new = Layout::from_size_align(size, b.align).expect("valid layouts");
                let a = &st.heap;
                // SAFETY: live, of this heap, with its layout; the new size is on the right
                // side of the old one for each call.
                let got = unsafe {
                    if size >= b.size {
                        a.grow(b.ptr, b.layout(), new)
                    } else {
                        a.shrink(b.ptr, b.layout(), new)
                    }
                };
                let Ok(got) = got else {
                    return Err(Failure(format!("op {step}: resize to {size} B failed")));
                };
                let ptr = got.cast::<u8>();
                if got.len() < size || !(ptr.as_ptr() as usize).is_multiple_of(b.align) {
                    return Err(Failure(format!("op {step}: resize to {size} B: bad block")));
                }
                let moved = Block { ptr, size, ..b };
                // SAFETY: live, `size` bytes.
                let bytes = unsafe { moved.bytes() };
                let kept = b.size.min(size);
                if let Some(at) = pattern::first_mismatch(b.id, &bytes[..kept]) {
                    return Err(Failure(format!("op {step}: resize lost byte {at}")));
                }
                pattern::fill(b.id, bytes, kept);
                st.live[i] = moved;
                st.check_counts(step)?;
            }
            HeapOp::FreeElsewhere { pick } => {
                let Some(i) = st.pick(pick) else { continue };
                let b = st.live.swap_remove(i);
                b.check(&format!("op {step}: before its free elsewhere"))?;
                let p = b.ptr.as_ptr() as usize;
                std::thread::spawn(move || {
                    // SAFETY: a live block of hakmem's, given up; the heap outlives the join.
                    unsafe { hakmem::raw::free(p as *mut u8) }
                })
                .join()
                .map_err(|_| Failure(format!("op {step}: the freeing thread panicked")))?;
                st.check_counts(step)?;
            }
            HeapOp::Collect => {
                st.heap.collect();
                st.check_counts(step)?;
                let s = st.heap.stats();
                if s.live_blocks() == 0 && s.mapped_bytes() != 0 {
                    return Err(Failure(format!(
                        "op {step}: collect left {} bytes mapped with no live block",
                        s.mapped_bytes()
                    )));
                }
            }
            HeapOp::Reset => {
                st.heap.reset();
                st.after_reset(step)?;
            }
            HeapOp::Renew => {
                st.heap = Heap::new();
                st.after_reset(step)?;
            }
        }
        if step % 16 == 15 {
            let mut ranges: Vec<_> = st
                .live
                .iter()
                .map(|b| {
                    (
                        b.ptr.as_ptr() as usize,
                        b.ptr.as_ptr() as usize + b.size,
                        b.id,
                    )
                })
                .collect();
            if let Some((x, y)) = overlaps(&mut ranges) {
                return Err(Failure(format!(
                    "op {step}: blocks {x:?} and {y:?} overlap"
                )));
            }
            for b in &st.live {
                b.check(&format!("op {step}"))?;
            }
        }
    }
    Ok(())
}
