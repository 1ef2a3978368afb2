//! CPU kernels whose every output element is computed in an order fixed by the shapes alone.
//!
//! The element-wise functions ([`Unary`], [`gelu_backward`]) are `libm`'s, vectorised with the
//! same bits (see the module `elementwise`).
//!
//! [`matmul`] computes `C = A·B` in `f32`, each element as
//!
//! ```text
//! C[i, j] = s₀ + s₁ + … + s_{q-1}                      (added left to right)
//! s_b     = fma(A[i, k_last], B[k_last, j], … fma(A[i, k_first], B[k_first, j], +0.0))
//! ```
//!
//! where block `b` runs over `k_first = b·KC … k_last = min((b+1)·KC, k) − 1` in increasing order
//! ([`KC`] = 512) and `fma` is the fused multiply-add, rounded once (IEEE 754). Nothing else
//! rounds, so the result is a function of the operands' values and `k` only: not of the vector
//! width, the tile, the cache, the operands' strides or the number of threads.
//!
//! That is by construction. The product is tiled over the output: a tile holds `MR` rows by
//! `NV` vectors of columns, one accumulator per output element, each lane a different column;
//! a wider vector puts more columns side by side and changes no element's order. `B` is packed
//! into contiguous panels, and `A` too unless it is row-major (then its rows are read in place);
//! packing zero-pads the edges (the padded lanes' results are never stored) and reads a
//! transposed operand where it lies, never through a copied tensor.
//! Threads take whole rows of the output. The one kernel is written once, generic over
//! `pulp::Simd`, and dispatched at run time: 8 lanes with AVX2 and FMA, 16 with AVX-512 where
//! the CPU has it, 1 (`f32::mul_add`, also fused) elsewhere. The tests compare every width that
//! runs on an AVX2 machine (1, 4, 8, and 16 as two 8-lane halves) against a scalar loop that
//! spells out the definition above.

mod elementwise;

pub use elementwise::{Unary, gelu_backward, gelu_backward_on, gelu_backward_scalar};

use pulp::bytemuck;
use pulp::{Simd, WithSimd};
use rayon::prelude::*;

/// Depth of one block of the sum over `k` (see the crate's documentation). Part of the numerics:
/// changing it changes the bits of every product with `k > KC`.
pub const KC: usize = 512;

/// Rows of a tile.
const MR: usize = 6;
/// Vectors of columns in a tile: `MR × NV` accumulators (12 of AVX2's 16 registers).
const NV: usize = 2;
/// Columns of `B` packed at once (with `KC` rows: 256 KiB, within a core's L2).
const NC: usize = 128;
/// Columns of a parallel task's share are a multiple of this (a whole number of panels at up to
/// 16 lanes).
const TASK_COLUMNS: usize = 32;

/// A read-only `f32` matrix view: `rows × cols` elements of `data`, element `(r, c)` at
/// `offset + r·row_stride + c·col_stride`. Strides may be anything (a transposed view has a row
/// stride of 1); every element the view addresses is checked to lie in `data` when it is made.
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a> {
    data: &'a [f32],
    offset: usize,
    rows: usize,
    cols: usize,
    row_stride: isize,
    col_stride: isize,
}

impl<'a> MatRef<'a> {
    /// The view, or `None` when some element it addresses is outside `data`.
    pub fn new(
        data: &'a [f32],
        offset: usize,
        [rows, cols]: [usize; 2],
        [row_stride, col_stride]: [isize; 2],
    ) -> Option<Self> {
        if rows > 0 && cols > 0 {
            let reach = |n: usize, s: isize| isize::try_from(n - 1).ok()?.checked_mul(s);
            let (r, c) = (reach(rows, row_stride)?, reach(cols, col_stride)?);
            let base = isize::try_from(offset).ok()?;
            let low = base.checked_add(r.min(0))?.checked_add(c.min(0))?;
            let high = base.checked_add(r.max(0))?.checked_add(c.max(0))?;
            if low < 0 || usize::try_from(high).ok()? >= data.len() {
                return None;
            }
        }
        Some(MatRef {
            data,
            offset,
            rows,
            cols,
            row_stride,
            col_stride,
        })
    }

    /// A row-major matrix filling `data`.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Option<Self> {
        if rows.checked_mul(cols)? != data.len() {
            return None;
        }
        Self::new(data, 0, [rows, cols], [cols as isize, 1])
    }

    /// `[rows, cols]`.
    pub fn shape(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    /// Index in `data` of element `(r, c)` (in bounds: checked when the view was made).
    fn index(&self, r: usize, c: usize) -> usize {
        (self.offset as isize + r as isize * self.row_stride + c as isize * self.col_stride)
            as usize
    }

    /// Columns `[c0, c0 + count)` of this view (no copy).
    fn columns(self, c0: usize, count: usize) -> Self {
        debug_assert!(self.rows > 0 && c0 + count <= self.cols);
        MatRef {
            offset: self.index(0, c0),
            cols: count,
            ..self
        }
    }

    /// This view with rows and columns swapped (no copy).
    pub fn transpose(self) -> Self {
        MatRef {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }
}

/// `c = a · b`, with `c` row-major `[a.rows, b.cols]`, in the order the crate's documentation
/// defines. `parallel` splits the rows of `c` over rayon's current pool; the bits are the same
/// either way.
///
/// # Panics
/// When the shapes do not agree (`a.cols != b.rows`, or `c` is not `a.rows × b.cols` long).
pub fn matmul(c: &mut [f32], a: MatRef<'_>, b: MatRef<'_>, parallel: bool) {
    let arch = pulp::Arch::new();
    split(c, a, b, parallel, |rows| arch.dispatch(rows));
}

/// [`matmul`] on the instruction set `simd`, on the calling thread. Every `simd` gives the same
/// bits; the tests and the benchmark use this to run each vector width.
pub fn matmul_on<S: Simd>(simd: S, c: &mut [f32], a: MatRef<'_>, b: MatRef<'_>) {
    split(c, a, b, false, |rows| simd.vectorize(rows));
}

/// Check the shapes, handle the empty cases and cut `c` into tasks of whole rows.
fn split(
    c: &mut [f32],
    a: MatRef<'_>,
    b: MatRef<'_>,
    parallel: bool,
    run: impl Fn(Rows<'_>) + Sync,
) {
    let ([m, k], [kb, n]) = (a.shape(), b.shape());
    assert!(
        k == kb && Some(c.len()) == m.checked_mul(n),
        "matmul: [{m}, {k}] × [{kb}, {n}] into {} elements",
        c.len()
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c.fill(0.0);
        return;
    }
    let threads = rayon::current_num_threads();
    if !parallel || threads == 1 {
        return run(Rows { c, row0: 0, a, b });
    }
    // One task per thread, splitting the output along the dimension whose split repeats less
    // packing: a row task packs all of `B` (k × n), a column task all of `A` (m × k).
    if m >= n {
        let rows_per_task = m.div_ceil(threads).next_multiple_of(MR);
        c.par_chunks_mut(rows_per_task * n)
            .enumerate()
            .for_each(|(t, c)| {
                run(Rows {
                    c,
                    row0: t * rows_per_task,
                    a,
                    b,
                })
            });
    } else {
        // Each task computes its columns into a buffer of its own, copied into `c` after.
        let columns = n.div_ceil(threads).next_multiple_of(TASK_COLUMNS);
        let shares: Vec<(usize, Vec<f32>)> = (0..n)
            .step_by(columns)
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|c0| {
                let b = b.columns(c0, columns.min(n - c0));
                let mut share = vec![0.0f32; m * b.cols];
                run(Rows {
                    c: &mut share,
                    row0: 0,
                    a,
                    b,
                });
                (c0, share)
            })
            .collect();
        c.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
            for (c0, share) in &shares {
                let w = share.len() / m;
                row[*c0..c0 + w].copy_from_slice(&share[i * w..(i + 1) * w]);
            }
        });
    }
}

/// Rows `row0 ..` of the product (as many as `c` holds).
struct Rows<'a> {
    c: &'a mut [f32],
    row0: usize,
    a: MatRef<'a>,
    b: MatRef<'a>,
}

impl WithSimd for Rows<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let Rows { c, row0, a, b } = self;
        let (k, n) = (a.cols, b.cols);
        let rows = c.len() / n;
        let width = NV * S::F32_LANES;
        let depth = KC.min(k);
        let tiles = rows.div_ceil(MR);
        // The packing buffers are the thread's, reused from call to call: every element a
        // product reads is written by its packing first, so they are neither cleared nor freed.
        let (mut scratch_a, mut scratch_b) = SCRATCH.with_borrow_mut(std::mem::take);
        let b_len = depth * NC.min(n).div_ceil(width) * width;
        scratch_a.resize(scratch_a.len().max(depth * MR * tiles), 0.0);
        scratch_b.resize(scratch_b.len().max(b_len), 0.0);
        let packed_b: &mut [S::f32s] = bytemuck::cast_slice_mut(&mut scratch_b[..b_len]);
        for (block, k0) in (0..k).step_by(KC).enumerate() {
            let kb = KC.min(k - k0);
            let packed_a = &mut scratch_a[..kb * MR * tiles];
            // A row-major `A` is read in place by full tiles (its rows are the tile's six
            // streams); only a last, partial tile is packed (zero-padded).
            let direct = a.col_stride == 1;
            let packed_from = if direct { rows / MR * MR } else { 0 };
            let first_packed = packed_from / MR * kb * MR;
            pack_a(
                &mut packed_a[first_packed..],
                &a,
                [row0 + packed_from, rows - packed_from],
                [k0, kb],
            );
            for j0 in (0..n).step_by(NC) {
                let nc = NC.min(n - j0);
                let packed_b = &mut packed_b[..nc.div_ceil(width) * kb * NV];
                pack_b(simd, packed_b, &b, [k0, kb], [j0, nc]);
                for (t, tile_a) in packed_a.chunks_exact(kb * MR).enumerate() {
                    let i0 = t * MR;
                    let in_place = (i0 < packed_from).then(|| {
                        core::array::from_fn::<_, MR, _>(|r| {
                            let start = a.index(row0 + i0 + r, k0);
                            &a.data[start..start + kb]
                        })
                    });
                    for (p, panel) in packed_b.chunks_exact(kb * NV).enumerate() {
                        let acc = match in_place {
                            Some(rows) => tile(simd, row_columns(rows), panel),
                            None => tile(simd, packed_columns(tile_a), panel),
                        };
                        let j = j0 + p * width;
                        let out = Out {
                            n,
                            rows: [i0, MR.min(rows - i0)],
                            cols: [j, width.min(n - j)],
                        };
                        out.store(simd, c, &acc, block == 0);
                    }
                }
            }
        }
        SCRATCH.set((scratch_a, scratch_b));
    }
}

thread_local! {
    /// Each thread's packing buffers (packed `A`, packed `B`), kept between products.
    static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const {
        std::cell::RefCell::new((Vec::new(), Vec::new()))
    };
}

/// One tile: `MR` rows of `A`, given as one `[f32; MR]` column per `k` (from packed `A`, or
/// zipped from `MR` row-major rows read in place), against one panel of packed `B`
/// (`[kb][NV vectors]`), each accumulator a chain of fused multiply-adds in increasing `k`.
#[inline(always)]
fn tile<S: Simd>(
    simd: S,
    a: impl Iterator<Item = [f32; MR]>,
    b: &[S::f32s],
) -> [[S::f32s; NV]; MR] {
    let mut acc = [[simd.splat_f32s(0.0); NV]; MR];
    for (b, a) in b.chunks_exact(NV).zip(a) {
        for (acc, x) in acc.iter_mut().zip(a) {
            let x = simd.splat_f32s(x);
            for (acc, &y) in acc.iter_mut().zip(b) {
                *acc = simd.mul_add_f32s(x, y, *acc);
            }
        }
    }
    acc
}

/// Packed `A` (`[kb][MR]`) as [`tile`]'s columns.
#[inline(always)]
fn packed_columns(a: &[f32]) -> impl Iterator<Item = [f32; MR]> + '_ {
    a.chunks_exact(MR)
        .map(|column| <[f32; MR]>::try_from(column).unwrap_or_default())
}

/// `MR` row-major rows of `A` (each a slice over the block's `k`) as [`tile`]'s columns.
#[inline(always)]
fn row_columns(rows: [&[f32]; MR]) -> impl Iterator<Item = [f32; MR]> + '_ {
    const { assert!(MR == 6, "row_columns zips exactly six rows") };
    let [a0, a1, a2, a3, a4, a5] = rows;
    let zipped = a0.iter().zip(a1).zip(a2).zip(a3).zip(a4).zip(a5);
    zipped.map(|(((((&x0, &x1), &x2), &x3), &x4), &x5)| [x0, x1, x2, x3, x4, x5])
}

/// Where a tile's results go in the row-major output (`n` columns): rows `[first, count]`,
/// columns `[first, count]`.
struct Out {
    n: usize,
    rows: [usize; 2],
    cols: [usize; 2],
}

impl Out {
    /// Store the first block's sums, or add a later block's to what is there (one rounding per
    /// element either way, as the definition has it).
    #[inline(always)]
    fn store<S: Simd>(&self, simd: S, c: &mut [f32], acc: &[[S::f32s; NV]; MR], first: bool) {
        let ([i0, mr], [j, w]) = (self.rows, self.cols);
        let lanes = S::F32_LANES;
        let put = |old: S::f32s, sum: S::f32s| if first { sum } else { simd.add_f32s(old, sum) };
        for (r, acc) in acc.iter().take(mr).enumerate() {
            let start = (i0 + r) * self.n + j;
            let out = &mut c[start..start + w];
            let whole = match w == NV * lanes {
                true => <&mut [S::f32s; NV]>::try_from(bytemuck::cast_slice_mut(&mut *out)).ok(),
                false => None,
            };
            if let Some(whole) = whole {
                for (o, &sum) in whole.iter_mut().zip(acc) {
                    *o = put(*o, sum);
                }
            } else {
                for (out, &sum) in out.chunks_mut(lanes).zip(acc) {
                    let old = simd.partial_load_f32s(out);
                    simd.partial_store_f32s(out, put(old, sum));
                }
            }
        }
    }
}

/// Pack rows `[k0, k0 + kb)`, columns `[j0, j0 + nc)` of `b` into panels of `NV` vectors of
/// columns, each `[kb][NV]`, zero beyond column `nc`.
#[inline(always)]
fn pack_b<S: Simd>(
    simd: S,
    out: &mut [S::f32s],
    b: &MatRef<'_>,
    [k0, kb]: [usize; 2],
    [j0, nc]: [usize; 2],
) {
    let lanes = S::F32_LANES;
    let width = NV * lanes;
    for (p, panel) in out.chunks_exact_mut(kb * NV).enumerate() {
        let jp = j0 + p * width;
        let cols = width.min(j0 + nc - jp);
        if b.col_stride == 1 {
            // Rows contiguous in `j`: whole vectors where the panel is full.
            for (kk, row) in panel.chunks_exact_mut(NV).enumerate() {
                let start = b.index(k0 + kk, jp);
                let src = &b.data[start..start + cols];
                let whole = <&mut [S::f32s; NV]>::try_from(&mut *row);
                let vectors = bytemuck::try_cast_slice::<f32, S::f32s>(src)
                    .ok()
                    .and_then(|v| <&[S::f32s; NV]>::try_from(v).ok());
                if let (Ok(row), Some(vectors)) = (whole, vectors) {
                    // A fixed-size copy (not a call to memcpy for 2 vectors).
                    *row = *vectors;
                } else {
                    for (v, slot) in row.iter_mut().enumerate() {
                        let part = &src[(v * lanes).min(cols)..((v + 1) * lanes).min(cols)];
                        *slot = simd.partial_load_f32s(part);
                    }
                }
            }
            continue;
        }
        let panel: &mut [f32] = bytemuck::cast_slice_mut(panel);
        if b.row_stride == 1 {
            // Each column contiguous in `k` (a transposed view): read along it.
            for jj in 0..cols {
                let start = b.index(k0, jp + jj);
                let column = &b.data[start..start + kb];
                for (row, &x) in panel.chunks_exact_mut(width).zip(column) {
                    row[jj] = x;
                }
            }
        } else {
            for (kk, row) in panel.chunks_exact_mut(width).enumerate() {
                for (jj, x) in row[..cols].iter_mut().enumerate() {
                    *x = b.data[b.index(k0 + kk, jp + jj)];
                }
            }
        }
        for row in panel.chunks_exact_mut(width) {
            row[cols..].fill(0.0);
        }
    }
}

/// Pack rows `[i0, i0 + rows)`, columns `[k0, k0 + kb)` of `a` as tiles of `MR` rows, each
/// `[kb][MR]`, zero beyond row `rows`.
fn pack_a(out: &mut [f32], a: &MatRef<'_>, [i0, rows]: [usize; 2], [k0, kb]: [usize; 2]) {
    if a.row_stride == 1 && a.col_stride != 1 {
        // Each column of `a` is contiguous in `i` (a transposed view): read it once, along its
        // length, handing `MR` rows at a time to each tile.
        for kk in 0..kb {
            let start = a.index(i0, k0 + kk);
            let column = &a.data[start..start + rows];
            for (tile, src) in out.chunks_exact_mut(kb * MR).zip(column.chunks(MR)) {
                let row = &mut tile[kk * MR..(kk + 1) * MR];
                match (
                    <&mut [f32; MR]>::try_from(&mut *row),
                    <&[f32; MR]>::try_from(src),
                ) {
                    (Ok(row), Ok(src)) => *row = *src,
                    _ => {
                        row[..src.len()].copy_from_slice(src);
                        row[src.len()..].fill(0.0);
                    }
                }
            }
        }
        return;
    }
    for (t, tile) in out.chunks_exact_mut(kb * MR).enumerate() {
        for ii in 0..MR {
            let i = t * MR + ii;
            if i >= rows {
                tile.chunks_exact_mut(MR).for_each(|row| row[ii] = 0.0);
            } else if a.col_stride == 1 {
                let start = a.index(i0 + i, k0);
                let src = &a.data[start..start + kb];
                for (row, &x) in tile.chunks_exact_mut(MR).zip(src) {
                    row[ii] = x;
                }
            } else {
                for (kk, row) in tile.chunks_exact_mut(MR).enumerate() {
                    row[ii] = a.data[a.index(i0 + i, k0 + kk)];
                }
            }
        }
    }
}
