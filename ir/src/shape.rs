//! Shapes with symbolic dimensions, and tensor types.

use crate::{DType, QuantParams};
use std::fmt;

/// One dimension: a known size, or a symbol: a product (`*`) of names (the dynamic batch `N`, a
/// sequence length, an image height `H`), numbers and derived sizes. A derived size is the size a
/// spatial op computes from a symbolic dim, written in one canonical form so that two nodes that
/// compute the same size carry the same symbol: `(B+b)/c` is `floor((B + b) / c)` for a product
/// `B`, an integer `b` and a divisor `c > 1` (a stride-2 convolution's `(H+1)/2`); `(B+b)` is
/// `B + b` (a padded `(H+2)`). A derived size is one factor: the `*` inside its parentheses never
/// splits it ([`Dim::factors`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Dim {
    Fixed(usize),
    Sym(String),
}

impl Dim {
    pub fn fixed(&self) -> Option<usize> {
        match self {
            Dim::Fixed(n) => Some(*n),
            Dim::Sym(_) => None,
        }
    }

    /// The dim as a constant factor and its symbols (sorted, with repetition): `N*S*16` is
    /// `(16, [N, S])`. A symbol is a product of names and numbers joined by `*`.
    pub fn factors(&self) -> Option<(usize, Vec<String>)> {
        match self {
            Dim::Fixed(n) => Some((*n, vec![])),
            Dim::Sym(s) => {
                let (mut k, mut syms) = (1usize, vec![]);
                for f in split_factors(s)? {
                    if f.is_empty() {
                        return None;
                    }
                    match f.parse::<usize>() {
                        Ok(n) => k = k.checked_mul(n)?,
                        Err(_) => syms.push(f.to_string()),
                    }
                }
                syms.sort();
                Some((k, syms))
            }
        }
    }

    /// The product of dims in canonical form: the symbols sorted, then the constant factor
    /// (`N*16`, `N*S`); `None` on overflow.
    pub fn product(dims: &[Dim]) -> Option<Dim> {
        let (mut k, mut syms) = (1usize, vec![]);
        for d in dims {
            let (dk, ds) = d.factors()?;
            k = k.checked_mul(dk)?;
            syms.extend(ds);
        }
        Some(Dim::from_factors(k, syms))
    }

    /// `k` times the symbols, in canonical form (a zero factor makes the fixed dim 0).
    pub fn from_factors(k: usize, mut syms: Vec<String>) -> Dim {
        if syms.is_empty() || k == 0 {
            return Dim::Fixed(k);
        }
        syms.sort();
        let mut s = syms.join("*");
        if k != 1 {
            s.push_str(&format!("*{k}"));
        }
        Dim::Sym(s)
    }
}

/// The factors of a symbol: split at every `*` outside parentheses; `None` when the parentheses
/// do not balance.
fn split_factors(s: &str) -> Option<Vec<&str>> {
    let (mut out, mut depth, mut start) = (vec![], 0usize, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.checked_sub(1)?,
            '*' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return None;
    }
    out.push(&s[start..]);
    Some(out)
}

/// `floor((a * B + b) / c)` over a product `B` (a [`Dim`] with no constant factor), `a, c >= 1`.
/// The symbolic form of what convolution, pooling, transposed convolution, padding, slicing and
/// resizing by a rational scale compute from a dim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Affine {
    pub a: u64,
    /// The product of symbols (`H`, `N*W`, `(H+1)/2`); never a number.
    pub base: String,
    pub b: i64,
    pub c: u64,
}

impl Affine {
    /// Parses a derived factor `(B+b)/c`, `(B-b)`, `(B)/c` (see [`Dim`]); `None` for a name.
    pub fn parse(f: &str) -> Option<Affine> {
        let rest = f.strip_prefix('(')?;
        // the parenthesis matching the opening one
        let mut depth = 1usize;
        let mut close = None;
        for (i, ch) in rest.char_indices() {
            match ch {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        close = Some(i);
                        break;
                    }
                }
                _ => {}
            }
        }
        let close = close?;
        let (inner, tail) = (&rest[..close], &rest[close + 1..]);
        let c = match tail {
            "" => 1,
            t => t.strip_prefix('/')?.parse::<u64>().ok().filter(|&c| c > 1)?,
        };
        // the last `+` or `-` outside parentheses separates the offset
        let mut depth = 0usize;
        let mut split = None;
        for (i, ch) in inner.char_indices() {
            match ch {
                '(' => depth += 1,
                ')' => depth = depth.checked_sub(1)?,
                '+' | '-' if depth == 0 => split = Some(i),
                _ => {}
            }
        }
        let (prod, b) = match split {
            Some(i) => {
                let v = inner[i + 1..].parse::<i64>().ok().filter(|v| *v > 0)?;
                (&inner[..i], if inner.as_bytes()[i] == b'-' { -v } else { v })
            }
            None if c > 1 => (inner, 0),
            None => return None,
        };
        // one product: a sum (a `+` or `-` outside parentheses) is not an affine size
        let mut depth = 0usize;
        for ch in prod.chars() {
            match ch {
                '(' => depth += 1,
                ')' => depth = depth.checked_sub(1)?,
                '+' | '-' if depth == 0 => return None,
                _ => {}
            }
        }
        let (a, syms) = Dim::Sym(prod.to_string()).factors()?;
        if syms.is_empty() {
            return None;
        }
        Some(Affine { a: u64::try_from(a).ok()?, base: syms.join("*"), b, c })
    }
}

impl Dim {
    /// `floor((a * self + b) / c)`, symbolically when `self` is a symbol (`a, c >= 1`): a product
    /// when the result is one (`H*2`, or `H` for a stride-1 'same' convolution), otherwise a
    /// derived factor in canonical form, so equal sizes computed by different ops (a 3x3 and a
    /// 1x1 stride-2 convolution, both `(H+1)/2`) are equal dims. Nested derived sizes compose
    /// (`floor((floor(x / p) + q) / r) = floor((x + q p) / (p r))`). `None` on overflow, on a
    /// negative fixed result, or for `a` or `c` zero.
    pub fn affine(&self, a: u64, b: i64, c: u64) -> Option<Dim> {
        if a == 0 || c == 0 {
            return None;
        }
        let (k, syms) = self.factors()?;
        let ai = i128::from(a).checked_mul(k as i128)?;
        if syms.is_empty() {
            let v = (ai + b as i128).div_euclid(c as i128);
            return usize::try_from(v).ok().map(Dim::Fixed);
        }
        // A single derived factor composes with this step.
        if let [f] = syms.as_slice() {
            if let Some(inner) = Affine::parse(f) {
                let base = Dim::from_factors(usize::try_from(inner.a).ok()?, vec![inner.base.clone()]);
                if inner.c == 1 {
                    // a (B + q) + b = a B + (a q + b)
                    let b2 = i64::try_from(ai.checked_mul(inner.b as i128)?.checked_add(b as i128)?).ok()?;
                    return base.affine(u64::try_from(ai).ok()?, b2, c);
                }
                if ai == 1 {
                    let b2 = i64::try_from((inner.b as i128).checked_add((b as i128).checked_mul(inner.c as i128)?)?)
                        .ok()?;
                    return base.affine(1, b2, inner.c.checked_mul(c)?);
                }
            }
        }
        // Canonical form: with g = gcd(a, c), floor((a B + b) / c) = floor((a/g B + floor(b/g)) /
        // (c/g)) (a/g B is an integer), so a and c are coprime; then b is determined by the
        // function (a B mod c takes every residue), and equal sizes print alike.
        let (a, b, c) = (ai, b as i128, c as i128);
        let g = gcd(a, c);
        let (a, b, c) = (a / g, b.div_euclid(g), c / g);
        let prod = Dim::from_factors(usize::try_from(a).ok()?, syms);
        if b == 0 && c == 1 {
            return Some(prod);
        }
        let mut s = format!("({prod}");
        if b != 0 {
            s.push_str(&format!("{b:+}"));
        }
        s.push(')');
        if c != 1 {
            s.push_str(&format!("/{c}"));
        }
        Some(Dim::Sym(s))
    }

    /// The size of the dim when every name in it is bound (`bind` gives a name's size); derived
    /// factors (affine sizes and sums) are evaluated. `None` when a name is unbound, on overflow,
    /// or for a negative size.
    pub fn eval(&self, bind: &dyn Fn(&str) -> Option<usize>) -> Option<usize> {
        let (k, syms) = self.factors()?;
        syms.iter().try_fold(k, |acc, f| {
            let v = match Derived::parse(f) {
                Some(d) => {
                    let mut total = d.b as i128;
                    for (k, base) in &d.terms {
                        let v = Dim::Sym(base.clone()).eval(bind)? as i128;
                        total = total.checked_add(i128::from(*k).checked_mul(v)?)?;
                    }
                    usize::try_from(total.div_euclid(d.c as i128)).ok()?
                }
                None => bind(f)?,
            };
            acc.checked_mul(v)
        })
    }

    /// The parts of a derived factor `f` (a factor of [`Dim::factors`]): `floor((k1*B1 + ... +
    /// b) / c)` as the terms `(ki, Bi)` (each `Bi` a product of factors), `b` and `c`; `None` for
    /// a name.
    pub fn derived_parts(f: &str) -> Option<DerivedParts> {
        Derived::parse(f).map(|d| (d.terms, d.b, d.c))
    }

    /// A lower bound of the dim's size, with every name at least 1 (a symbolic dim is a size of
    /// at least one element, as the importer's shape arithmetic assumes).
    pub fn lower_bound(&self) -> usize {
        let Some((k, syms)) = self.factors() else { return 0 };
        syms.iter().fold(k, |acc, f| {
            let v = match Derived::parse(f) {
                // a remainder's negative terms have no lower bound
                Some(d) if d.terms.iter().any(|(k, _)| *k < 0) => 0,
                Some(d) => {
                    let mut total = d.b as i128;
                    for (k, base) in &d.terms {
                        total = total.saturating_add(
                            i128::from(*k).saturating_mul(Dim::Sym(base.clone()).lower_bound() as i128),
                        );
                    }
                    usize::try_from(total.div_euclid(d.c as i128)).unwrap_or(0)
                }
                // a parenthesized factor the grammar does not know: no bound
                None if f.starts_with('(') => 0,
                None => 1,
            };
            acc.saturating_mul(v)
        })
    }

    /// The sum of dims in one canonical form: terms (a coefficient times a product of symbols)
    /// with equal products combined, sorted by their product, and the constant last:
    /// `((H+15)/16*(W+15)/16*9+(H+7)/8*(W+7)/8*9)`, the anchors of two detection-head levels
    /// concatenated. A sum of one term is that term (`H*2`, or `(H+2)` with a constant), and a
    /// sum already in this form is added term by term, so sums of sums are sums. The whole sum is
    /// one factor: it multiplies as a product does (`N*(A+B)`), and is never distributed.
    /// `None` on overflow.
    pub fn sum(dims: &[Dim]) -> Option<Dim> {
        let terms: Vec<(i64, Dim)> = dims.iter().map(|d| (1, d.clone())).collect();
        Dim::linear(&terms, 0)
    }

    /// `k1*d1 + k2*d2 + ... + b` in the canonical form of [`Dim::sum`], where a coefficient may be
    /// negative (a remainder, [`Dim::rem`], is written `x - c*floor(x/c)`; a negative term prints
    /// `-(H)/4`): like terms cancel, so a size padded by its remainder is one product
    /// (`(H)/4 + ((H+12)/16*4-(H)/4)` is `(H+12)/16*4`). `None` on overflow, for a negative
    /// constant result, or for a lone negative term (never a size).
    pub fn linear(dims: &[(i64, Dim)], b: i64) -> Option<Dim> {
        let mut terms: std::collections::BTreeMap<Vec<String>, i128> = Default::default();
        let mut b = i128::from(b);
        let mut add = |k: i128, mut syms: Vec<String>, b: &mut i128| -> Option<()> {
            // a floored size with an offset of c or more (or below 0) as the size with its offset
            // reduced below c, plus the whole part, so that `(H+4)/4 - (H)/4` cancels to 1
            if let [f] = syms.as_slice() {
                if let Some(af) = Affine::parse(f).filter(|af| af.c > 1 && !(0..af.c as i64).contains(&af.b)) {
                    let c = i64::try_from(af.c).ok()?;
                    let (q, r) = (af.b.div_euclid(c), af.b.rem_euclid(c));
                    let reduced = Dim::from_factors(usize::try_from(af.a).ok()?, vec![af.base]).affine(1, r, af.c)?;
                    *b = b.checked_add(k.checked_mul(i128::from(q))?)?;
                    let (rk, rs) = reduced.factors()?;
                    if rs.is_empty() {
                        *b = b.checked_add(k.checked_mul(rk as i128)?)?;
                        return Some(());
                    }
                    syms = rs;
                    let e = terms.entry(syms).or_insert(0);
                    *e = e.checked_add(k.checked_mul(rk as i128)?)?;
                    return Some(());
                }
            }
            if syms.is_empty() {
                *b = b.checked_add(k)?;
            } else {
                let e = terms.entry(syms).or_insert(0);
                *e = e.checked_add(k)?;
            }
            Some(())
        };
        for (m, d) in dims {
            let (k, syms) = d.factors()?;
            let k = (k as i128).checked_mul(i128::from(*m))?;
            // a sum (or an offset size `(B+b)`) adds its terms
            if let [f] = syms.as_slice() {
                if let Some(dv) = Derived::parse(f).filter(|dv| dv.c == 1) {
                    for (tk, base) in dv.terms {
                        let (bk, bs) = Dim::Sym(base).factors()?;
                        add(k.checked_mul(i128::from(tk))?.checked_mul(bk as i128)?, bs, &mut b)?;
                    }
                    add(k.checked_mul(i128::from(dv.b))?, vec![], &mut b)?;
                    continue;
                }
            }
            add(k, syms, &mut b)?;
        }
        terms.retain(|_, k| *k != 0);
        let mut printed: Vec<(String, i128)> = terms
            .into_iter()
            .map(|(syms, k)| Some((Dim::from_factors(usize::try_from(k.unsigned_abs()).ok()?, syms).to_string(), k)))
            .collect::<Option<_>>()?;
        match printed.as_slice() {
            [] => return usize::try_from(b).ok().map(Dim::Fixed),
            [(_, k)] if *k > 0 => {
                let (k, syms) = Dim::Sym(printed.remove(0).0).factors()?;
                let prod = Dim::from_factors(1, syms);
                return prod.affine(u64::try_from(k).ok()?, i64::try_from(b).ok()?, 1);
            }
            [_] => return None,
            _ => {}
        }
        printed.sort();
        let mut s = String::from("(");
        for (i, (t, k)) in printed.iter().enumerate() {
            if *k < 0 {
                s.push('-');
            } else if i > 0 {
                s.push('+');
            }
            s.push_str(t);
        }
        if b != 0 {
            s.push_str(&format!("{b:+}"));
        }
        s.push(')');
        Some(Dim::Sym(s))
    }

    /// `floor(self / c)` for `c >= 1`, also of a sum with negative terms: the terms whose
    /// coefficient `c` divides come out whole, and the rest must be one term (`floor((-B+b)/c)`
    /// is `-floor((B-b+c-1)/c)`) or a sum of positive terms. `None` where no canonical form
    /// exists or on overflow.
    pub fn floor_div(&self, c: u64) -> Option<Dim> {
        if c == 1 {
            return Some(self.clone());
        }
        let ci = i128::from(c);
        let (k, syms) = self.factors()?;
        let parts: (Vec<(i128, String)>, i128) = match syms.as_slice() {
            [] => return usize::try_from((k as i128).div_euclid(ci)).ok().map(Dim::Fixed),
            [f] if k == 1 => match Derived::parse(f).filter(|d| d.c == 1) {
                Some(d) => (d.terms.iter().map(|(k, t)| (i128::from(*k), t.clone())).collect(), i128::from(d.b)),
                None => (vec![(1, f.clone())], 0),
            },
            _ => (vec![(k as i128, syms.join("*"))], 0),
        };
        let (terms, b) = parts;
        // whole multiples of c (the quotient truncated, so each rest keeps its term's sign)
        let mut whole: Vec<(i64, Dim)> = vec![];
        let mut rest: Vec<(i128, Dim)> = vec![];
        for (k, t) in terms {
            let (tk, ts) = Dim::Sym(t).factors()?;
            let k = k.checked_mul(tk as i128)?;
            let (q, r) = (k / ci, k % ci);
            let base = Dim::from_factors(1, ts);
            if q != 0 {
                whole.push((i64::try_from(q).ok()?, base.clone()));
            }
            if r != 0 {
                rest.push((r, base));
            }
        }
        let (bq, br) = (b.div_euclid(ci), b.rem_euclid(ci));
        let (br, rc) = (i64::try_from(br).ok()?, i64::try_from(c).ok()?);
        match rest.as_slice() {
            [] => {}
            [(r, t)] if *r > 0 => whole.push((1, t.affine(u64::try_from(*r).ok()?, br, c)?)),
            // floor((-r t + b) / c) = -floor((r t - b + c - 1) / c)
            [(r, t)] => whole.push((-1, t.affine(u64::try_from(-*r).ok()?, rc.checked_sub(1)?.checked_sub(br)?, c)?)),
            _ if rest.iter().all(|(r, _)| *r > 0) => {
                let sum: Vec<(i64, Dim)> =
                    rest.iter().map(|(r, t)| Some((i64::try_from(*r).ok()?, t.clone()))).collect::<Option<_>>()?;
                whole.push((1, Dim::linear(&sum, br)?.affine(1, 0, c)?));
            }
            _ => return None,
        }
        Dim::linear(&whole, i64::try_from(bq).ok()?)
    }

    /// `self mod c` for `c >= 1` (ONNX integer Mod of a size by a positive constant), written
    /// `self - c*floor(self/c)`, so that what pads a size to a multiple of `c`, `(c - x mod c)
    /// mod c`, is `c*floor((x+c-1)/c) - x`, and the padded size `x + that` cancels to the product
    /// `c*floor((x+c-1)/c)`. Modulo 2 the remainder is also `-x mod 2`, and is written so
    /// (`2*floor((x+1)/2) - x`), so that padding by `x mod 2` (a patch merging's pad to even
    /// sizes) gives the same product.
    pub fn rem(&self, c: u64) -> Option<Dim> {
        let ci = i64::try_from(c).ok()?;
        // `x mod c` depends on x mod c only: each coefficient reduced to its residue nearest 0
        // (so `(4 - x + 4*floor(x/4)) mod 4` is `(-x) mod 4`), the constant to `0..c`
        let (k, syms) = self.factors()?;
        let (terms, b): (Vec<(i64, String)>, i64) = match syms.as_slice() {
            [] => return usize::try_from((k as i128).rem_euclid(i128::from(ci))).ok().map(Dim::Fixed),
            [f] if k == 1 => match Derived::parse(f).filter(|d| d.c == 1) {
                Some(d) => (d.terms, d.b),
                None => (vec![(1, f.clone())], 0),
            },
            _ => (vec![(1, self.to_string())], 0),
        };
        let mut reduced = vec![];
        for (k, t) in terms {
            let (tk, ts) = Dim::Sym(t).factors()?;
            let k = k.checked_mul(i64::try_from(tk).ok()?)?.rem_euclid(ci);
            let k = if 2 * k > ci { k - ci } else { k };
            if k != 0 {
                reduced.push((k, Dim::from_factors(1, ts)));
            }
        }
        let b = b.rem_euclid(ci);
        if let ([(1, x)], 0, 2) = (reduced.as_slice(), b, c) {
            let up = x.affine(1, 1, 2)?;
            return Dim::linear(&[(2, up), (-1, x.clone())], 0);
        }
        // `(-k x + b) mod c = -k x + b + c*floor((k x - b + c - 1) / c)`
        if let [(k, x)] = reduced.as_slice() {
            if *k < 0 {
                let up = x.affine(k.unsigned_abs(), ci - 1 - b, c)?;
                return Dim::linear(&[(*k, x.clone()), (ci, up)], b);
            }
        }
        let y = Dim::linear(&reduced, b)?;
        let q = y.floor_div(c)?;
        Dim::linear(&[(1, y), (-ci, q)], 0)
    }

    /// `c - self` for a size known to be at most `c` (the pad `c - x mod c` before its own
    /// remainder), in the canonical form of [`Dim::linear`].
    pub fn sub_from(&self, c: i64) -> Option<Dim> {
        Dim::linear(&[(-1, self.clone())], c)
    }

    /// The dim with every name replaced by the dim `bind` gives it (a name of the graph, or a
    /// placeholder for an op's input dim: [`Dim::input_dim`]), derived factors recomputed in
    /// canonical form. With fixed bindings the result is the fixed size ([`Dim::eval`]). `None`
    /// when a name is unbound, on overflow, or for a negative size.
    pub fn subst(&self, bind: &dyn Fn(&str) -> Option<Dim>) -> Option<Dim> {
        let (k, syms) = self.factors()?;
        let mut dims = vec![Dim::Fixed(k)];
        for f in &syms {
            dims.push(match Derived::parse(f) {
                Some(d) => {
                    let terms: Vec<(i64, Dim)> = d
                        .terms
                        .iter()
                        .map(|(k, base)| Some((*k, Dim::Sym(base.clone()).subst(bind)?)))
                        .collect::<Option<_>>()?;
                    Dim::linear(&terms, d.b)?.floor_div(d.c)?
                }
                None => bind(f)?,
            });
        }
        Dim::product(&dims)
    }

    /// The placeholder name of dim `axis` of an op's input `input` (`$1.2`), which sizes written
    /// in op attributes ([`crate::DimExpr`]) use for the dims they are computed from.
    pub fn input_dim(input: usize, axis: usize) -> Dim {
        Dim::Sym(format!("${input}.{axis}"))
    }

    /// The `(input, axis)` of a placeholder name ([`Dim::input_dim`]).
    pub fn parse_input_dim(name: &str) -> Option<(usize, usize)> {
        let (i, a) = name.strip_prefix('$')?.split_once('.')?;
        Some((i.parse().ok()?, a.parse().ok()?))
    }

    /// Whether the dim may be 0 though every name is at least 1: it holds a remainder (a
    /// derived factor with a negative term).
    pub fn may_be_zero(&self) -> bool {
        let Some((k, syms)) = self.factors() else { return true };
        k == 0 || syms.iter().any(|f| Derived::parse(f).is_some_and(|d| d.terms.iter().any(|(k, _)| *k < 0)))
    }

    /// Whether the dim is, or contains, a derived size.
    pub fn is_derived(&self) -> bool {
        matches!(self, Dim::Sym(s) if s.contains('('))
    }
}

/// The parts of a derived factor ([`Dim::derived_parts`]): the terms `(k, product)`, `b`, `c`.
pub type DerivedParts = (Vec<(i64, String)>, i64, u64);

/// A derived factor in its general form: `floor((k1*B1 + k2*B2 + ... + b) / c)` over products
/// `Bi` (strings without a constant factor) with non-zero coefficients `ki`, `c >= 1`. An
/// [`Affine`] size is one term; a sum of sizes ([`Dim::sum`]) has `c = 1`. A negative
/// coefficient comes only from a remainder ([`Dim::rem`]: `x mod c = x - c*floor(x/c)`), whose
/// value is never negative.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Derived {
    terms: Vec<(i64, String)>,
    b: i64,
    c: u64,
}

impl Derived {
    /// Parses `(t1+t2-...)` or `(...)/c` (terms are products or integers, split at the `+` and
    /// `-` outside parentheses); `None` for anything else.
    fn parse(f: &str) -> Option<Derived> {
        let rest = f.strip_prefix('(')?;
        let mut depth = 1usize;
        let mut close = None;
        for (i, ch) in rest.char_indices() {
            match ch {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        close = Some(i);
                        break;
                    }
                }
                _ => {}
            }
        }
        let close = close?;
        let (inner, tail) = (&rest[..close], &rest[close + 1..]);
        let c = match tail {
            "" => 1,
            t => t.strip_prefix('/')?.parse::<u64>().ok().filter(|&c| c > 1)?,
        };
        let (mut terms, mut b) = (vec![], 0i64);
        let (mut depth, mut start, mut sign) = (0usize, 0usize, 1i64);
        let mut push = |t: &str, sign: i64| -> Option<()> {
            if t.is_empty() {
                return None;
            }
            if let Ok(v) = t.parse::<i64>() {
                b = b.checked_add(v.checked_mul(sign)?)?;
                return Some(());
            }
            let (k, syms) = Dim::Sym(t.to_string()).factors()?;
            if syms.is_empty() {
                return None;
            }
            terms.push((i64::try_from(k).ok()?.checked_mul(sign)?, syms.join("*")));
            Some(())
        };
        for (i, ch) in inner.char_indices() {
            match ch {
                '(' => depth += 1,
                ')' => depth = depth.checked_sub(1)?,
                // a leading `-`: the first term is negative
                '-' if depth == 0 && i == 0 => {
                    sign = -1;
                    start = 1;
                }
                '+' | '-' if depth == 0 => {
                    push(&inner[start..i], sign)?;
                    sign = if ch == '-' { -1 } else { 1 };
                    start = i + 1;
                }
                _ => {}
            }
        }
        push(&inner[start..], sign)?;
        if terms.is_empty() {
            return None;
        }
        Some(Derived { terms, b, c })
    }
}

fn gcd(a: i128, b: i128) -> i128 {
    if b == 0 {
        a.abs()
    } else {
        gcd(b, a % b)
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Sym(s) => f.write_str(s),
        }
    }
}

impl From<usize> for Dim {
    fn from(n: usize) -> Self {
        Dim::Fixed(n)
    }
}

/// A shape; a rank-0 shape is a scalar.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
pub struct Shape(pub Vec<Dim>);

impl Shape {
    pub fn fixed(dims: &[usize]) -> Self {
        Shape(dims.iter().map(|&d| Dim::Fixed(d)).collect())
    }
    pub fn rank(&self) -> usize {
        self.0.len()
    }
    pub fn dims(&self) -> &[Dim] {
        &self.0
    }
    /// All dimensions, if none is symbolic.
    pub fn as_fixed(&self) -> Option<Vec<usize>> {
        self.0.iter().map(Dim::fixed).collect()
    }
    pub fn is_fixed(&self) -> bool {
        self.0.iter().all(|d| d.fixed().is_some())
    }
    /// Number of elements, if the shape is fixed.
    pub fn numel(&self) -> Option<usize> {
        self.as_fixed().map(|d| d.iter().product())
    }
    /// Replaces symbols by the sizes in `bind`; unknown symbols stay symbolic.
    pub fn bind(&self, bind: &dyn Fn(&str) -> Option<usize>) -> Shape {
        Shape(
            self.0
                .iter()
                .map(|d| match d {
                    Dim::Sym(s) => bind(s).map(Dim::Fixed).unwrap_or_else(|| d.clone()),
                    d => d.clone(),
                })
                .collect(),
        )
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

/// The type of an SSA value: element type, shape and, for quantized values, the scale and zero
/// point that give the stored integers their meaning.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TensorType {
    pub dtype: DType,
    pub shape: Shape,
    pub quant: Option<QuantParams>,
}

impl TensorType {
    pub fn new(dtype: DType, shape: Shape) -> Self {
        TensorType { dtype, shape, quant: None }
    }
    /// Bytes of a value of this type with its symbols (and products of symbols, `2*N`) sized
    /// by `bind`; None when one is not bound.
    pub fn bytes_with(&self, bind: &std::collections::HashMap<String, usize>) -> Option<u128> {
        let mut bytes = self.dtype.size_bytes() as u128;
        for d in self.shape.dims() {
            let (k, syms) = d.factors()?;
            bytes = bytes.saturating_mul(k as u128);
            for s in syms {
                bytes = bytes.saturating_mul(*bind.get(&s)? as u128);
            }
        }
        Some(bytes)
    }
    pub fn quantized(dtype: DType, shape: Shape, quant: QuantParams) -> Self {
        TensorType { dtype, shape, quant: Some(quant) }
    }
    pub fn with_shape(&self, shape: Shape) -> Self {
        TensorType { shape, ..self.clone() }
    }
    pub fn rank(&self) -> usize {
        self.shape.rank()
    }
}

impl fmt::Display for TensorType {
    /// `f32[N,3,224,224]`, `u8<0.0039215689:0>[N,16,8,8]`, `i8<axis=0: 0.01:0, ...>[16,1,3,3]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.dtype)?;
        if let Some(q) = &self.quant {
            write!(f, "{q}")?;
        }
        write!(f, "{}", self.shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Remainders, floor divisions and differences of symbolic sizes evaluate to what the same
    /// integer arithmetic gives, at every size, under plain and derived bases.
    #[test]
    fn remainders_and_floor_divisions_evaluate_exactly() {
        let h = Dim::Sym("H".into());
        for base in [h.clone(), h.affine(1, 0, 4).unwrap(), h.affine(1, 1, 2).unwrap(), h.affine(3, -2, 1).unwrap()] {
            for c in 1..=7u64 {
                let r = base.rem(c).unwrap();
                let q = base.floor_div(c).unwrap();
                let pad = r.sub_from(c as i64).unwrap().rem(c).unwrap();
                let padded = Dim::sum(&[base.clone(), pad.clone()]).unwrap();
                let ci = c as usize;
                for n in 1..100usize {
                    let v = base.eval(&|_| Some(n)).unwrap();
                    let at = |d: &Dim| d.eval(&|_| Some(n));
                    assert_eq!(at(&r), Some(v % ci), "{base} mod {c} = {r} at H={n}");
                    assert_eq!(at(&q), Some(v / ci), "{base} / {c} = {q} at H={n}");
                    assert_eq!(at(&pad), Some((ci - v % ci) % ci), "pad {pad} at H={n}");
                    assert_eq!(at(&padded), Some(v.div_ceil(ci) * ci), "padded {padded} at H={n}");
                }
                // the padded size cancels to one product (no sum left), for a base that is
                // not a multiple plus an offset (whose remainder is that of a smaller multiple)
                assert!(
                    base.to_string().contains("*3")
                        || padded
                            .factors()
                            .unwrap()
                            .1
                            .iter()
                            .all(|f| Affine::parse(f).is_some() || !f.starts_with('(')),
                    "{base} padded to {c}: {padded}"
                );
            }
        }
    }

    /// The canonical forms Swin's window padding takes: the pad, the padded size, and a size
    /// plus a constant meeting the same size less its floor.
    #[test]
    fn window_padding_forms() {
        let x = Dim::Sym("H".into()).affine(1, 0, 4).unwrap();
        let pad = x.rem(4).unwrap().sub_from(4).unwrap().rem(4).unwrap();
        assert_eq!(pad.to_string(), "(-(H)/4+(H+12)/16*4)");
        assert_eq!(Dim::sum(&[x.clone(), pad]).unwrap().to_string(), "(H+12)/16*4");
        // padding by `x mod 2` is padding to even
        let odd = Dim::sum(&[x.clone(), x.rem(2).unwrap()]).unwrap();
        assert_eq!(odd.to_string(), "(H+4)/8*2");
        // `(x + 1) - x` is 1 whatever the form of `x + 1`
        let x1 = x.affine(1, 1, 1).unwrap();
        assert_eq!(Dim::linear(&[(1, x1), (-1, x.clone())], 0), Some(Dim::Fixed(1)));
        // a placeholder substituted is the size it names
        let e = Dim::input_dim(0, 2).rem(4).unwrap();
        assert_eq!(e.subst(&|_| Some(x.clone())), Some(x.rem(4).unwrap()));
        assert_eq!(e.subst(&|_| Some(Dim::Fixed(18))), Some(Dim::Fixed(2)));
        assert_eq!(Dim::parse_input_dim("$3.1"), Some((3, 1)));
        assert!(x.rem(4).unwrap().may_be_zero() && !x.may_be_zero());
    }
}
