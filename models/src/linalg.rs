//! The little dense linear algebra ALS needs: Gram matrices and SPD solves of d × d systems
//! (d is small: 16 to 128), in f64 for stability.

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
}
