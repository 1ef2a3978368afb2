//! The matrix product's bits are its definition's (the crate documentation's order, spelled out
//! below as a scalar loop) at every vector width that runs here, every operand layout and every
//! thread count.

use kernels::{KC, MatRef, matmul, matmul_on};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

/// The definition: per element, blocks of `KC` fused multiply-add chains from +0.0, the blocks'
/// sums added left to right.
fn reference(a: &Dense, b: &Dense) -> Vec<f32> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let mut c = vec![0.0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut total = 0.0f32;
            for (block, k0) in (0..k).step_by(KC).enumerate() {
                let mut s = 0.0f32;
                for kk in k0..(k0 + KC).min(k) {
                    s = a.at(i, kk).mul_add(b.at(kk, j), s);
                }
                total = if block == 0 { s } else { total + s };
            }
            c[i * n + j] = total;
        }
    }
    c
}

/// A matrix's values with the layout they are stored in.
struct Dense {
    data: Vec<f32>,
    offset: usize,
    rows: usize,
    cols: usize,
    strides: [isize; 2],
}

#[derive(Clone, Copy, Debug)]
enum Layout {
    RowMajor,
    /// Stored as its transpose, viewed transposed (as a model's `Wᵀ` is).
    Transposed,
    /// Every other column of a wider matrix, from an offset.
    Strided,
}

impl Dense {
    fn random(rng: &mut ChaCha8Rng, rows: usize, cols: usize, layout: Layout) -> Dense {
        // Values spread over 2⁻⁸…2⁸ so that summation order shows in the last bits.
        let mut value = || {
            let v = (rng.next_u32() >> 8) as f32 / (1 << 24) as f32 * 2.0 - 1.0;
            v * 2f32.powi((rng.next_u32() % 17) as i32 - 8)
        };
        match layout {
            Layout::RowMajor => Dense {
                data: (0..rows * cols).map(|_| value()).collect(),
                offset: 0,
                rows,
                cols,
                strides: [cols as isize, 1],
            },
            Layout::Transposed => Dense {
                data: (0..rows * cols).map(|_| value()).collect(),
                offset: 0,
                rows,
                cols,
                strides: [1, rows as isize],
            },
            Layout::Strided => {
                let row_stride = 2 * cols + 3;
                Dense {
                    data: (0..5 + rows * row_stride).map(|_| value()).collect(),
                    offset: 5,
                    rows,
                    cols,
                    strides: [row_stride as isize, 2],
                }
            }
        }
    }

    fn at(&self, r: usize, c: usize) -> f32 {
        let i = self.offset as isize + r as isize * self.strides[0] + c as isize * self.strides[1];
        self.data[i as usize]
    }

    fn view(&self) -> MatRef<'_> {
        MatRef::new(
            &self.data,
            self.offset,
            [self.rows, self.cols],
            self.strides,
        )
        .expect("the view lies within its data")
    }
}

/// Every vector width this machine runs: 1 lane, and with AVX2 + FMA 4 (xmm), 8 (ymm), 8 as
/// 256-bit, and 16 (the width of AVX-512, as two ymm halves).
fn every_width(c: &mut [f32], a: MatRef<'_>, b: MatRef<'_>) -> Vec<(&'static str, Vec<f32>)> {
    let mut out = Vec::new();
    let mut run = |name: &'static str, f: &dyn Fn(&mut [f32])| {
        c.fill(f32::NAN);
        f(c);
        out.push((name, c.to_vec()));
    };
    run("scalar", &|c| matmul_on(pulp::Scalar::new(), c, a, b));
    run("dispatched", &|c| matmul(c, a, b, false));
    run("dispatched, parallel", &|c| matmul(c, a, b, true));
    #[cfg(target_arch = "x86_64")]
    if let Some(v3) = pulp::x86::V3::try_new() {
        run("4 lanes", &|c| matmul_on(pulp::x86::V3_128b(v3), c, a, b));
        run("8 lanes", &|c| matmul_on(v3, c, a, b));
        run("8 lanes (256b)", &|c| {
            matmul_on(pulp::x86::V3_256b(v3), c, a, b)
        });
        run("16 lanes", &|c| matmul_on(pulp::x86::V3_512b(v3), c, a, b));
    }
    out
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn every_width_and_layout_gives_the_definitions_bits() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let shapes = [
        (1, 1, 1),
        (1, 7, 1),
        (2, 3, 2),
        (5, 1, 9),
        (6, 16, 16),
        (7, 33, 17),
        (13, 64, 31),
        (32, 64, 32),
        (40, 511, 33),
        (9, 512, 40),
        (11, 513, 65),
        (97, 100, 129),
        (8, 1100, 19),
        (130, 70, 300),
    ];
    let layouts = [Layout::RowMajor, Layout::Transposed, Layout::Strided];
    let mut checked = 0;
    for &(m, k, n) in &shapes {
        for (la, lb) in layouts
            .iter()
            .flat_map(|&x| layouts.iter().map(move |&y| (x, y)))
        {
            let a = Dense::random(&mut rng, m, k, la);
            let b = Dense::random(&mut rng, k, n, lb);
            let want = bits(&reference(&a, &b));
            let mut c = vec![0.0f32; m * n];
            for (width, got) in every_width(&mut c, a.view(), b.view()) {
                assert!(
                    bits(&got) == want,
                    "[{m}, {k}] × [{k}, {n}], {la:?} × {lb:?}: {width} differs from the definition"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= shapes.len() * 9 * 3);
}

#[test]
fn the_definition_is_not_the_only_order() {
    // The comparison above can fail: one unblocked chain over k = 1,100 (the order a kernel
    // without the fixed block would use) differs from the definition in many elements.
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let (m, k, n) = (8, 1100, 16);
    let a = Dense::random(&mut rng, m, k, Layout::RowMajor);
    let b = Dense::random(&mut rng, k, n, Layout::RowMajor);
    let mut c = vec![0.0f32; m * n];
    matmul(&mut c, a.view(), b.view(), false);
    let differing = (0..m * n)
        .filter(|&e| {
            let (i, j) = (e / n, e % n);
            let chain = (0..k).fold(0.0f32, |s, kk| a.at(i, kk).mul_add(b.at(kk, j), s));
            chain.to_bits() != c[e].to_bits()
        })
        .count();
    assert!(
        differing > 0,
        "every element agreed with an unblocked chain"
    );
}

#[test]
fn thread_count_does_not_change_a_bit() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let (m, k, n) = (300, 700, 150);
    let a = Dense::random(&mut rng, m, k, Layout::RowMajor);
    let b = Dense::random(&mut rng, k, n, Layout::Transposed);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool");
        let mut c = vec![0.0f32; m * n];
        pool.install(|| matmul(&mut c, a.view(), b.view(), true));
        bits(&c)
    };
    let one = run(1);
    assert_eq!(one, run(2));
    assert_eq!(one, run(3));
    assert_eq!(one, bits(&reference(&a, &b)));
}

#[test]
fn views_outside_their_data_are_refused() {
    let data = vec![0.0f32; 12];
    assert!(MatRef::new(&data, 0, [3, 4], [4, 1]).is_some());
    assert!(MatRef::new(&data, 1, [3, 4], [4, 1]).is_none());
    assert!(MatRef::new(&data, 0, [4, 3], [1, 5]).is_none());
    assert!(MatRef::new(&data, 11, [3, 4], [-4, -1]).is_some());
    assert!(MatRef::new(&data, 10, [3, 4], [-4, -1]).is_none());
    assert!(MatRef::new(&data, 0, [2, 2], [isize::MAX, 1]).is_none());
    assert!(MatRef::row_major(&data, 3, 5).is_none());
    assert!(MatRef::new(&[], 0, [0, 4], [4, 1]).is_some());
}

#[test]
fn empty_depth_gives_zeros() {
    let a: Vec<f32> = Vec::new();
    let mut c = vec![f32::NAN; 6];
    let (a, b) = (
        MatRef::new(&a, 0, [2, 0], [0, 1]).expect("a"),
        MatRef::new(&a, 0, [0, 3], [3, 1]).expect("b"),
    );
    matmul(&mut c, a, b, false);
    assert!(c.iter().all(|&x| x.to_bits() == 0));
}
