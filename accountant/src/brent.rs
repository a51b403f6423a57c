//! Brent's bracketed root finder (the classic algorithm as in scipy's `brentq`), used by every
//! inversion in this crate: a sign change is required, so a root is never guessed.

/// Finds a root of `f` in `[a, b]` where `f(a)` and `f(b)` have opposite signs (or one is 0),
/// to `|dx| <= (xtol + rtol |x|) / 2`. Returns `None` without a sign change.
pub fn brentq(mut f: impl FnMut(f64) -> f64, a: f64, b: f64, xtol: f64, rtol: f64) -> Option<f64> {
    let (mut xpre, mut xcur) = (a, b);
    let (mut fpre, mut fcur) = (f(xpre), f(xcur));
    if fpre.is_nan() || fcur.is_nan() || fpre * fcur > 0.0 {
        return None;
    }
    if fpre == 0.0 {
        return Some(xpre);
    }
    if fcur == 0.0 {
        return Some(xcur);
    }
    let (mut xblk, mut fblk, mut spre, mut scur) = (0.0, 0.0, 0.0, 0.0);
    for _ in 0..200 {
        if fpre != 0.0 && fcur != 0.0 && (fpre.is_sign_negative() != fcur.is_sign_negative()) {
            xblk = xpre;
            fblk = fpre;
            spre = xcur - xpre;
            scur = spre;
        }
        if fblk.abs() < fcur.abs() {
            xpre = xcur;
            xcur = xblk;
            xblk = xpre;
            fpre = fcur;
            fcur = fblk;
            fblk = fpre;
        }
        let delta = (xtol + rtol * xcur.abs()) / 2.0;
        let sbis = (xblk - xcur) / 2.0;
        if fcur == 0.0 || sbis.abs() < delta {
            return Some(xcur);
        }
        if spre.abs() > delta && fcur.abs() < fpre.abs() {
            let stry = if xpre == xblk {
                -fcur * (xcur - xpre) / (fcur - fpre)
            } else {
                let dpre = (fpre - fcur) / (xpre - xcur);
                let dblk = (fblk - fcur) / (xblk - xcur);
                -fcur * (fblk * dblk - fpre * dpre) / (dblk * dpre * (fblk - fpre))
            };
            if 2.0 * stry.abs() < spre.abs().min(3.0 * sbis.abs() - delta) {
                spre = scur;
                scur = stry;
            } else {
                spre = sbis;
                scur = sbis;
            }
        } else {
            spre = sbis;
            scur = sbis;
        }
        xpre = xcur;
        fpre = fcur;
        xcur += if scur.abs() > delta { scur } else if sbis > 0.0 { delta } else { -delta };
        fcur = f(xcur);
        if fcur.is_nan() {
            return None;
        }
    }
    Some(xcur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_roots() {
        let r = brentq(|x| x * x - 2.0, 0.0, 2.0, 1e-14, 1e-15).unwrap();
        assert!((r - 2f64.sqrt()).abs() < 1e-13);
        let r = brentq(|x| (x - 1.0f64).exp_m1(), -3.0, 10.0, 1e-14, 1e-15).unwrap();
        assert!((r - 1.0).abs() < 1e-13);
        assert!(brentq(|x| x * x + 1.0, -1.0, 1.0, 1e-12, 1e-12).is_none());
    }
}
