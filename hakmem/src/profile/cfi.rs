//! A DWARF unwinder with a cache of each return address's rule (profile PT6), for x86_64.
//!
//! libgcc's `_Unwind_Backtrace` finds, decodes and runs each frame's call-frame program anew at
//! every frame of every stack: about 1 500 instructions a frame, 18 000 a sample. A program's
//! samples pass through the same few hundred return addresses again and again, and on x86_64
//! almost every frame's rule at a return address is "the CFA is `rsp` or `rbp` plus a
//! constant, the return address and perhaps the caller's `rbp` are saved at constant offsets
//! from it". So the rule is worked out once per return address (gimli reads the `.eh_frame`
//! tables that glibc's `_dl_find_object` names) and kept in a fixed table; a walk then costs,
//! a frame, the loader's lock-free lookup of the object, a table lookup and two or three
//! loads. A frame this unwinder does not step (a CFA by expression, as signal trampolines and
//! realigned frames have, a register rule other than the plain ones, code in no loaded object,
//! the rule context busy) gives the whole stack to libgcc's unwinder, which takes the same
//! frames: the two agree frame for frame (a test compares them). Without `_dl_find_object`
//! (glibc before 2.35) every stack goes to libgcc.
//!
//! Invariants:
//! - **PT6 (cached rules).** A slot holds a return address, the identity of the object that
//!   held it (its link map and mapped range, as `_dl_find_object` reports them) and its rule,
//!   published by a sequence lock (odd while written): a reader takes a rule only if the
//!   sequence is even and the same before and after it read the three words, and the object
//!   that holds the address now is the one the rule was worked out in, so code loaded later
//!   where an unloaded object was never meets an old rule. Rules are worked out under a
//!   try-lock over one static gimli context; a thread that finds it held gives its stack to
//!   libgcc instead of waiting. Nothing here allocates or takes a lock that a fork could leave
//!   held (`_dl_find_object` takes none; `dl_iterate_phdr` would, and glibc's fork does not
//!   reset that one).
//! - **PT7 (walk).** Each step moves the stack pointer up (a CFA at or below it ends the
//!   walk), so a walk ends; it reads only the saved words the rules name, in frames the
//!   stack's own unwind tables describe, as libgcc's unwinder does.
use core::cell::UnsafeCell;
use core::ffi::{c_int, c_void};
use core::mem::MaybeUninit;
use core::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering::*};

use gimli::{
    BaseAddresses, CfaRule, EhFrame, EhFrameHdr, EndianSlice, NativeEndian, Pointer, Register,
    RegisterRule, UnwindContext, UnwindContextStorage, UnwindSection, X86_64,
};

use super::table::MAX_FRAMES;
use super::unwind::Frames;

/// Slots of the rule table (a direct-mapped cache by return address): 128 KiB of `.bss`,
/// touched as return addresses come.
const SLOTS: usize = 1 << 12;

/// A frame's rule, packed in a word: `kind` (bits 0-1), the CFA's base register (bit 2: `rbp`,
/// else `rsp`), the caller's `rbp` (bits 3-4: unchanged, saved, undefined), the return
/// address's offset from the CFA (bits 8-23), the saved `rbp`'s (bits 24-39) and the CFA's
/// offset from its base (bits 40-63, signed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rule {
    /// A frame this unwinder steps.
    Frame {
        cfa_rbp: bool,
        cfa_off: i32,
        ra_off: i16,
        rbp: Saved,
    },
    /// The outermost frame: its return address is undefined, or no unwind table covers it
    /// (libgcc's walk ends there too, after reporting it).
    End,
    /// A frame for libgcc's unwinder.
    Other,
}

/// Where the caller's `rbp` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Saved {
    Same,
    At(i16),
    Undefined,
}

const KIND_FRAME: u64 = 1;
const KIND_END: u64 = 2;
const KIND_OTHER: u64 = 3;
/// The largest CFA offset a packed rule holds (24 bits, signed).
const CFA_OFF_MAX: i64 = (1 << 23) - 1;

impl Rule {
    fn pack(self) -> u64 {
        match self {
            Rule::Frame {
                cfa_rbp,
                cfa_off,
                ra_off,
                rbp,
            } => {
                let (how, off) = match rbp {
                    Saved::Same => (0, 0),
                    Saved::At(o) => (1, o),
                    Saved::Undefined => (2, 0),
                };
                KIND_FRAME
                    | u64::from(cfa_rbp) << 2
                    | how << 3
                    | u64::from(ra_off as u16) << 8
                    | u64::from(off as u16) << 24
                    | (u64::from(cfa_off as u32) & 0xff_ffff) << 40
            }
            Rule::End => KIND_END,
            Rule::Other => KIND_OTHER,
        }
    }

    fn unpack(w: u64) -> Rule {
        match w & 3 {
            KIND_FRAME => Rule::Frame {
                cfa_rbp: w & 4 != 0,
                // Sign-extended from 24 bits.
                cfa_off: ((w as i64) >> 40) as i32,
                ra_off: (w >> 8) as u16 as i16,
                rbp: match (w >> 3) & 3 {
                    0 => Saved::Same,
                    1 => Saved::At((w >> 24) as u16 as i16),
                    _ => Saved::Undefined,
                },
            },
            KIND_END => Rule::End,
            _ => Rule::Other,
        }
    }
}

/// A slot of the rule table (PT6).
struct Slot {
    seq: AtomicU64,
    pc: AtomicU64,
    obj: AtomicU64,
    rule: AtomicU64,
}

static RULES: [Slot; SLOTS] = [const {
    Slot {
        seq: AtomicU64::new(0),
        pc: AtomicU64::new(0),
        obj: AtomicU64::new(0),
        rule: AtomicU64::new(0),
    }
}; SLOTS];

fn slot_of(pc: usize) -> &'static Slot {
    let h = (pc as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 52;
    &RULES[h as usize % SLOTS]
}

/// The cached rule of return address `pc` in the object identified by `obj`, if a slot
/// holds it.
fn cached(pc: usize, obj: u64) -> Option<Rule> {
    let s = slot_of(pc);
    let seq = s.seq.load(Acquire);
    if seq & 1 != 0 {
        return None;
    }
    let (p, o, r) = (
        s.pc.load(Relaxed),
        s.obj.load(Relaxed),
        s.rule.load(Relaxed),
    );
    fence(Acquire);
    (s.seq.load(Relaxed) == seq && p == pc as u64 && o == obj && r != 0).then(|| Rule::unpack(r))
}

/// Keeps `rule` for `pc` in object `obj`, unless another thread is writing the slot.
fn keep(pc: usize, obj: u64, rule: Rule) {
    let s = slot_of(pc);
    let seq = s.seq.load(Relaxed);
    if seq & 1 != 0
        || s.seq
            .compare_exchange(seq, seq + 1, Acquire, Relaxed)
            .is_err()
    {
        return;
    }
    // The odd sequence before the words (a reader that sees a new word then sees it odd, or
    // later, in its second load: its Acquire fence synchronizes with this one).
    fence(Release);
    s.pc.store(pc as u64, Relaxed);
    s.obj.store(obj, Relaxed);
    s.rule.store(rule.pack(), Relaxed);
    s.seq.store(seq + 2, Release);
}

/// gimli's row storage without the heap: x86_64's call-frame programs name the 17 general
/// registers and the return address; a program with more rules fails to evaluate, and its
/// frame goes to libgcc.
struct Fixed;

impl<T: gimli::ReaderOffset> UnwindContextStorage<T> for Fixed {
    type Rules = [(Register, RegisterRule<T>); 24];
    type Stack = [gimli::UnwindTableRow<T, Self>; 4];
}

type Ctx = UnwindContext<usize, Fixed>;

/// The one gimli context, under [`CTX_BUSY`] (PT6).
struct CtxCell(UnsafeCell<MaybeUninit<Ctx>>);
// SAFETY: reached only by the thread that set `CTX_BUSY` (a try-lock) until it clears it.
unsafe impl Sync for CtxCell {}
static CTX: CtxCell = CtxCell(UnsafeCell::new(MaybeUninit::uninit()));
static CTX_BUSY: AtomicBool = AtomicBool::new(false);
static CTX_MADE: AtomicBool = AtomicBool::new(false);

/// A fork's child: a thread that held the context at the fork does not exist there.
pub fn after_fork_child() {
    CTX_BUSY.store(false, Release);
}

/// Works out the rule of return address `pc` (looked up at `pc - 1`, inside its call) in
/// object `o`, or `None` when the context is busy.
fn work_out(pc: usize, o: &Object) -> Option<Rule> {
    if CTX_BUSY.swap(true, Acquire) {
        return None;
    }
    // SAFETY: `CTX_BUSY` is ours until the store below (PT6); the context is made once,
    // under it.
    let ctx = unsafe {
        let c = &mut *CTX.0.get();
        if !CTX_MADE.load(Relaxed) {
            c.write(Ctx::new_in());
            CTX_MADE.store(true, Relaxed);
        }
        c.assume_init_mut()
    };
    let rule = rule_in(o, pc - 1, ctx);
    CTX_BUSY.store(false, Release);
    Some(rule)
}

/// glibc's `struct dl_find_object` (`<dlfcn.h>`, 2.35).
#[repr(C)]
struct DlFindObject {
    flags: u64,
    map_start: usize,
    map_end: usize,
    link_map: usize,
    eh_frame: usize,
    reserved: [u64; 7],
}

type FindFn = unsafe extern "C" fn(*mut c_void, *mut DlFindObject) -> c_int;

/// `_dl_find_object`, looked up once by [`init`]; 0 when this glibc has none.
static FIND: AtomicUsize = AtomicUsize::new(0);

/// Looks up glibc's `_dl_find_object` (lock-free and async-signal-safe): the cached-rule
/// unwinder runs only with it. Called when profiling starts, outside the allocation paths
/// (`dlsym` may allocate).
pub fn init() {
    if FIND.load(Relaxed) == 0 {
        // SAFETY: a symbol lookup by a NUL-terminated name.
        let f = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"_dl_find_object".as_ptr()) };
        FIND.store(f as usize, Relaxed);
    }
}

/// The loaded object that holds `pc`: where it is mapped, its `.eh_frame_hdr` and an
/// identity for the rule table (PT6).
struct Object {
    map_end: usize,
    hdr: usize,
    id: u64,
}

#[inline(always)]
fn find_object(find: usize, pc: usize) -> Option<Object> {
    let mut r = MaybeUninit::<DlFindObject>::uninit();
    // SAFETY: `find` is `_dl_find_object` (from `init`, non-zero); it fills `r` when it
    // returns 0, and reads nothing else.
    let ok = unsafe {
        let f: FindFn = core::mem::transmute::<usize, FindFn>(find);
        f(pc as *mut c_void, r.as_mut_ptr()) == 0
    };
    if !ok {
        return None;
    }
    // SAFETY: filled, as `_dl_find_object` returned 0.
    let r = unsafe { r.assume_init() };
    let id = (r.link_map as u64)
        ^ (r.map_start as u64).rotate_left(21)
        ^ (r.map_end as u64).rotate_left(42);
    Some(Object {
        map_end: r.map_end,
        hdr: r.eh_frame,
        id: id | 1,
    })
}

/// The rule at `at` in object `o`: [`Rule::End`] where its tables have no entry for it.
fn rule_in(o: &Object, at: usize, ctx: &mut Ctx) -> Rule {
    if o.hdr == 0 || o.hdr >= o.map_end {
        return Rule::End;
    }
    // SAFETY: the object's `.eh_frame_hdr`, inside its mapping (up to `map_end`), mapped
    // while the object is loaded (it holds `at`, a return address on this thread's stack, so
    // it is); gimli reads the header and the table entries it names, inside the segment.
    let hdr = unsafe { core::slice::from_raw_parts(o.hdr as *const u8, o.map_end - o.hdr) };
    let bases = BaseAddresses::default().set_eh_frame_hdr(o.hdr as u64);
    let Ok(parsed) = EhFrameHdr::new(hdr, NativeEndian).parse(&bases, 8) else {
        return Rule::Other;
    };
    let Pointer::Direct(eh) = parsed.eh_frame_ptr() else {
        return Rule::Other;
    };
    let eh = eh as usize;
    if eh >= o.map_end {
        return Rule::Other;
    }
    // SAFETY: `.eh_frame`, inside the object's mapping, as above; gimli reads the entries the
    // header's table names.
    let eh_bytes = unsafe { core::slice::from_raw_parts(eh as *const u8, o.map_end - eh) };
    let bases = bases.set_eh_frame(eh as u64);
    let eh_frame = EhFrame::new(eh_bytes, NativeEndian);
    let Some(table) = parsed.table() else {
        return Rule::Other;
    };
    let row = match table.unwind_info_for_address(
        &eh_frame,
        &bases,
        ctx,
        at as u64,
        EhFrame::<EndianSlice<NativeEndian>>::cie_from_offset,
    ) {
        Ok(row) => row,
        Err(gimli::Error::NoUnwindInfoForAddress) => return Rule::End,
        Err(_) => return Rule::Other,
    };
    let (cfa_rbp, cfa_off) = match *row.cfa() {
        CfaRule::RegisterAndOffset { register, offset }
            if (register == X86_64::RSP || register == X86_64::RBP)
                && (-CFA_OFF_MAX..=CFA_OFF_MAX).contains(&offset) =>
        {
            (register == X86_64::RBP, offset as i32)
        }
        _ => return Rule::Other,
    };
    let small = |o: i64| i16::try_from(o).ok();
    let ra_off = match row.register(X86_64::RA) {
        Some(RegisterRule::Offset(o)) => match small(o) {
            Some(o) => o,
            None => return Rule::Other,
        },
        Some(RegisterRule::Undefined) => return Rule::End,
        _ => return Rule::Other,
    };
    let rbp = match row.register(X86_64::RBP) {
        None | Some(RegisterRule::SameValue) => Saved::Same,
        Some(RegisterRule::Offset(o)) => match small(o) {
            Some(o) => Saved::At(o),
            None => return Rule::Other,
        },
        Some(RegisterRule::Undefined) => Saved::Undefined,
        Some(_) => return Rule::Other,
    };
    Rule::Frame {
        cfa_rbp,
        cfa_off,
        ra_off,
        rbp,
    }
}

/// The calling thread's stack as libgcc's `_Unwind_Backtrace` reports it, innermost first,
/// without this function's frame, from the cached rules (PT6, PT7), written into `f`; false
/// when a frame needs libgcc's unwinder (`f` then holds a part).
#[inline(never)]
pub fn capture(f: &mut Frames) -> bool {
    let (mut pc, mut sp, mut fp): (usize, usize, usize);
    // SAFETY: reads the instruction pointer (the next instruction's address), the stack
    // pointer and the frame register; no memory, no stack, no flags.
    unsafe {
        core::arch::asm!(
            "lea {pc}, [rip]",
            "mov {sp}, rsp",
            "mov {fp}, rbp",
            pc = out(reg) pc,
            sp = out(reg) sp,
            fp = out(reg) fp,
            options(nomem, nostack, preserves_flags),
        );
    }
    // `pc` is inside this function, not a return address: its rule is looked up at `pc - 1`
    // as a return address's is, which lies in the same instructions.
    pc += 1;
    let find = FIND.load(Relaxed);
    if find == 0 {
        return false;
    }
    let mut fp_known = true;
    f.len = 0;
    loop {
        // Code in no loaded object (registered at run time, as JIT compilers do): libgcc's.
        let Some(o) = find_object(find, pc - 1) else {
            return false;
        };
        let rule = match cached(pc, o.id) {
            Some(r) => r,
            None => {
                let Some(r) = work_out(pc, &o) else {
                    return false;
                };
                keep(pc, o.id, r);
                r
            }
        };
        let (cfa_rbp, cfa_off, ra_off, rbp) = match rule {
            Rule::Frame {
                cfa_rbp,
                cfa_off,
                ra_off,
                rbp,
            } => (cfa_rbp, cfa_off, ra_off, rbp),
            Rule::End => return true,
            Rule::Other => return false,
        };
        if cfa_rbp && !fp_known {
            return false;
        }
        let cfa = if cfa_rbp { fp } else { sp }.wrapping_add(cfa_off as isize as usize);
        if cfa <= sp {
            // PT7: a CFA at or below the stack pointer is no frame of this stack.
            return true;
        }
        // SAFETY: the frame's unwind table says its return address is saved there, in the
        // frame between `sp` and its CFA (PT7).
        let ra = unsafe { (cfa.wrapping_add(ra_off as isize as usize) as *const usize).read() };
        match rbp {
            Saved::Same => {}
            Saved::At(o) => {
                // SAFETY: as above, for the caller's `rbp`.
                fp = unsafe { (cfa.wrapping_add(o as isize as usize) as *const usize).read() };
                fp_known = true;
            }
            Saved::Undefined => fp_known = false,
        }
        sp = cfa;
        if ra == 0 {
            return true;
        }
        f.ips[f.len] = ra;
        f.len += 1;
        if f.len == MAX_FRAMES {
            return true;
        }
        pc = ra;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_pack_and_unpack() {
        for r in [
            Rule::End,
            Rule::Other,
            Rule::Frame {
                cfa_rbp: false,
                cfa_off: 8,
                ra_off: -8,
                rbp: Saved::Same,
            },
            Rule::Frame {
                cfa_rbp: true,
                cfa_off: 16,
                ra_off: -8,
                rbp: Saved::At(-16),
            },
            Rule::Frame {
                cfa_rbp: false,
                cfa_off: CFA_OFF_MAX as i32,
                ra_off: i16::MIN,
                rbp: Saved::Undefined,
            },
            Rule::Frame {
                cfa_rbp: true,
                cfa_off: -(CFA_OFF_MAX as i32),
                ra_off: i16::MAX,
                rbp: Saved::At(i16::MIN),
            },
        ] {
            assert_eq!(Rule::unpack(r.pack()), r);
        }
    }

    #[test]
    fn a_slot_keeps_a_rule_for_its_object_only() {
        let pc = 0x7000_1234_5678;
        let r = Rule::Frame {
            cfa_rbp: false,
            cfa_off: 48,
            ra_off: -8,
            rbp: Saved::At(-24),
        };
        keep(pc, 7, r);
        assert_eq!(cached(pc, 7), Some(r));
        assert_eq!(cached(pc, 8), None, "another object at the same address");
        assert_eq!(cached(pc + 1, 7), None);
    }
}
