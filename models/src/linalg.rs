//! The little dense linear algebra the models need, in f64 for stability: Gram matrices and
//! SPD solves of d × d systems for ALS (d is small: 16 to 128), and the inverse of an n × n SPD
//! matrix for the item-to-item part (n up to a few thousand).

/// Adds `w · x xᵀ` to the row-major d × d matrix `a`.
pub fn add_outer(a: &mut [f64], x: &[f32], w: f64) {
    let d = x.len();
    for i in 0..d {
        let wxi = w * f64::from(x[i]);
        let row = &mut a[i * d..(i + 1) * d];
        for (j, r) in row.iter_mut().enumerate() {
            *r += wxi * f64::from(x[j]);
        }
    }
}

/// `Yᵀ Y` of the row-major n × d matrix `y`.
pub fn gram(y: &[f32], d: usize) -> Vec<f64> {
    let mut g = vec![0.0; d * d];
    for row in y.chunks_exact(d) {
        add_outer(&mut g, row, 1.0);
    }
    g
}

/// Solves `a x = b` for symmetric positive-definite `a` (destroyed) by Cholesky; `b` becomes `x`.
/// Returns false if `a` is not positive definite.
pub fn cholesky_solve(a: &mut [f64], b: &mut [f64]) -> bool {
    let d = b.len();
    for j in 0..d {
        let mut s = a[j * d + j];
        for k in 0..j {
            s -= a[j * d + k] * a[j * d + k];
        }
        if s <= 0.0 || !s.is_finite() {
            return false;
        }
        let l = s.sqrt();
        a[j * d + j] = l;
        for i in j + 1..d {
            let mut s = a[i * d + j];
            for k in 0..j {
                s -= a[i * d + k] * a[j * d + k];
            }
            a[i * d + j] = s / l;
        }
    }
    for i in 0..d {
        let mut s = b[i];
        for k in 0..i {
            s -= a[i * d + k] * b[k];
        }
        b[i] = s / a[i * d + i];
    }
    for i in (0..d).rev() {
        let mut s = b[i];
        for k in i + 1..d {
            s -= a[k * d + i] * b[k];
        }
        b[i] = s / a[i * d + i];
    }
    true
}

/// Inverts the symmetric positive-definite row-major n × n matrix `a` in place by Gauss–Jordan
/// elimination (an SPD matrix needs no pivoting), the row updates of each step spread over the
/// cores. Returns false, leaving `a` undefined, if a pivot is not positive.
pub fn invert_spd(a: &mut [f64], n: usize) -> bool {
    let threads = std::thread::available_parallelism()
        .map_or(1, |t| t.get())
        .min(8);
    let threads = if n < 256 { 1 } else { threads };
    let chunk_rows = n.div_ceil(threads).max(1);
    let mut pivot_row = vec![0f64; n];
    for k in 0..n {
        let p = a[k * n + k];
        if p <= 0.0 || !p.is_finite() {
            return false;
        }
        a[k * n + k] = 1.0;
        for v in &mut a[k * n..(k + 1) * n] {
            *v /= p;
        }
        pivot_row.copy_from_slice(&a[k * n..(k + 1) * n]);
        let eliminate = |rows: &mut [f64], first: usize| {
            for (r, row) in rows.chunks_exact_mut(n).enumerate() {
                if first + r == k {
                    continue;
                }
                let f = row[k];
                if f != 0.0 {
                    row[k] = 0.0;
                    for (x, &q) in row.iter_mut().zip(&pivot_row) {
                        *x -= f * q;
                    }
                }
            }
        };
        if threads == 1 {
            eliminate(a, 0);
        } else {
            std::thread::scope(|s| {
                for (c, rows) in a.chunks_mut(chunk_rows * n).enumerate() {
                    let eliminate = &eliminate;
                    s.spawn(move || eliminate(rows, c * chunk_rows));
                }
            });
        }
    }
    true
}

pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// For any well-conditioned SPD system (MᵀM + I), the solution satisfies A x = b.
        #[test]
        fn cholesky_solves_spd_systems(m in prop::collection::vec(-2.0f32..2.0, 16), b in prop::collection::vec(-5.0f64..5.0, 4)) {
            let d = 4;
            let mut a = gram(&m, d);
            for i in 0..d { a[i * d + i] += 1.0; }
            let original = a.clone();
            let mut x = b.clone();
            prop_assert!(cholesky_solve(&mut a, &mut x));
            for i in 0..d {
                let ax: f64 = (0..d).map(|j| original[i * d + j] * x[j]).sum();
                prop_assert!((ax - b[i]).abs() < 1e-8, "row {} off by {}", i, ax - b[i]);
            }
        }

    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// The inverse of a well-conditioned SPD matrix times the matrix is the identity, on the
        /// one-thread path (small n) and the threaded one.
        #[test]
        fn inverts_spd_matrices(
            values in prop::collection::vec(-2.0f32..2.0, 900),
            n in prop_oneof![Just(3usize), Just(300usize)],
        ) {
            // R Rᵀ + I for n rows of 3 values.
            let row = |i: usize| &values[i * 3..i * 3 + 3];
            let mut a: Vec<f64> = (0..n * n)
                .map(|x| f64::from(dot(row(x / n), row(x % n))) + f64::from(u8::from(x / n == x % n)))
                .collect();
            let original = a.clone();
            prop_assert!(invert_spd(&mut a, n));
            for i in (0..n).step_by(37) {
                for j in 0..n {
                    let e: f64 = (0..n).map(|k| original[i * n + k] * a[k * n + j]).sum();
                    let want = f64::from(u8::from(i == j));
                    prop_assert!((e - want).abs() < 1e-8, "({}, {}) = {}", i, j, e);
                }
            }
        }
    }
}
