//! M7: the medium tier's huge-page advice, in a process of its own (the tier's state is
//! process-wide): a new region is advised when the tier holds at least `HUGE_AFTER` regions
//! that are nearly all touched, and not when they hold little; the advice is gone before a
//! purge of the region and when it goes back to the lru.
use hakmem_hot_heap::Ctx;
use hakmem_medium::{alloc, collect, free, GRANULE, HUGE_AFTER};
use hakmem_superslab::{HeapOs, SS_SIZE};

/// A block of 170 granules: three fill a region (511 granules past its header) but one.
const THIRD: usize = 170 * GRANULE;

fn base(p: *mut u8) -> usize {
    p as usize & !(SS_SIZE - 1)
}

/// Frees `p`, a live block of `ctx`'s medium tier.
fn give(ctx: &Ctx, p: *mut u8) {
    // SAFETY: a live medium block of ours, at its region's base, freed once.
    assert_eq!(unsafe { free(ctx, None, base(p), p) }, Ok(()));
}

#[test]
fn a_dense_tier_gets_huge_pages_and_a_sparse_one_does_not() {
    let os: &'static HeapOs = Box::leak(Box::new(HeapOs::new(16)));
    let ctx: &'static Ctx = Box::leak(Box::new(Ctx::new(
        os,
        os.registry(),
        hakmem_lru::LruConfig::default(),
        false,
        |c| panic!("corruption: {c:?}"),
    )));
    // Three blocks per region, six regions: the fifth and sixth are made while the tier holds
    // at least HUGE_AFTER full regions.
    let regions = HUGE_AFTER + 2;
    let blocks: Vec<[*mut u8; 3]> = (0..regions)
        .map(|_| {
            let b = [0; 3].map(|_| alloc(ctx, None, THIRD, 16, false));
            assert!(b.iter().all(|p| !p.is_null() && base(*p) == base(b[0])));
            b
        })
        .collect();
    let bases: Vec<usize> = blocks.iter().map(|b| base(b[0])).collect();
    let advised: Vec<bool> = bases.iter().map(|&b| os.is_huge(b)).collect();
    let want: Vec<bool> = (0..regions).map(|i| i >= HUGE_AFTER).collect();
    assert_eq!(advised, want, "advised regions");
    assert_eq!(os.late_advice(), 0, "advice after the first touch");

    // An empty region is kept; a second one goes back to the lru, without its advice.
    let (first, fifth, sixth) = (0, HUGE_AFTER, HUGE_AFTER + 1);
    blocks[first].iter().for_each(|&p| give(ctx, p));
    blocks[fifth].iter().for_each(|&p| give(ctx, p));
    assert!(!os.is_huge(bases[fifth]), "released with its advice");
    assert!(os.is_huge(bases[sixth]));

    // The others keep their middle block; a purge of the sixth's free runs takes its advice
    // back first.
    for b in blocks.iter().skip(1).filter(|b| base(b[0]) != bases[fifth]) {
        give(ctx, b[0]);
        give(ctx, b[2]);
    }
    assert!(collect(ctx) > 0);
    assert!(!os.is_huge(bases[sixth]), "purged with its advice");

    // Now the tier's regions hold a third each: the region a block of 255 granules needs (their
    // free runs are 170 and 171 granules long) is not advised.
    let big = alloc(ctx, None, 255 * GRANULE, 16, false);
    assert!(!big.is_null());
    let holding = |b: usize| b != bases[first] && b != bases[fifth] && bases.contains(&b);
    assert!(
        !holding(base(big)),
        "a region that holds a block has no such run"
    );
    assert!(!os.is_huge(base(big)), "advised while the tier is sparse");
    give(ctx, big);
    for b in blocks.iter().skip(1).filter(|b| base(b[0]) != bases[fifth]) {
        give(ctx, b[1]);
    }
    collect(ctx);
    assert!(bases.iter().all(|&b| !os.is_huge(b)));
}
