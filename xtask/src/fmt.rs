//! Numbers as the README writes them: rounded half away from zero from the decimal digits the
//! JSON holds (1.465 to two places is 1.47, as a reader rounding the file would have it),
//! thousands separated by commas, negatives with a minus sign (−).

/// `x` with `decimals` places: `num(3976.336, 0)` is `3,976`, `num(-5.245, 0)` is `−5`.
pub fn num(x: f64, decimals: usize) -> String {
    if !x.is_finite() {
        return x.to_string();
    }
    // Display gives the shortest digits that read back as `x`, never in exponent form.
    let shortest = format!("{}", x.abs());
    let (int, frac) = shortest.split_once('.').unwrap_or((&shortest, ""));
    let frac = frac.as_bytes();
    let mut digits: Vec<u8> = int
        .bytes()
        .chain((0..decimals).map(|i| frac.get(i).copied().unwrap_or(b'0')))
        .map(|b| b - b'0')
        .collect();
    if frac.get(decimals).is_some_and(|&d| d >= b'5') {
        let mut i = digits.len();
        loop {
            if i == 0 {
                digits.insert(0, 1);
                break;
            }
            i -= 1;
            if digits[i] == 9 {
                digits[i] = 0;
            } else {
                digits[i] += 1;
                break;
            }
        }
    }
    let (int, frac) = digits.split_at(digits.len() - decimals);
    let mut out = String::new();
    if x < 0.0 && digits.iter().any(|&d| d != 0) {
        out.push('−');
    }
    for (i, d) in int.iter().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(char::from(b'0' + d));
    }
    if decimals > 0 {
        out.push('.');
        out.extend(frac.iter().map(|d| char::from(b'0' + d)));
    }
    out
}

/// A ratio: `times(1.465, 2)` is `1.47×`.
pub fn times(x: f64, decimals: usize) -> String {
    format!("{}×", num(x, decimals))
}

/// A percentage of a value already in percent: `percent(3.937, 1)` is `3.9%`.
pub fn percent(x: f64, decimals: usize) -> String {
    format!("{}%", num(x, decimals))
}

/// `yes` or `no`.
pub fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_half_away_from_zero_from_their_decimal_digits() {
        assert_eq!(num(1.465, 2), "1.47");
        assert_eq!(num(0.985, 2), "0.99");
        assert_eq!(num(0.985, 3), "0.985");
        assert_eq!(num(351.875, 1), "351.9");
        assert_eq!(num(150.985, 1), "151.0");
        assert_eq!(num(0.999, 2), "1.00");
        assert_eq!(num(9.96, 1), "10.0");
        assert_eq!(num(999.5, 0), "1,000");
        assert_eq!(num(0.002, 3), "0.002");
        assert_eq!(num(0.0004, 3), "0.000");
        assert_eq!(num(2.0, 1), "2.0");
        assert_eq!(num(7.0, 0), "7");
    }

    #[test]
    fn thousands_are_separated_and_negatives_take_a_minus_sign() {
        assert_eq!(num(3976.336, 0), "3,976");
        assert_eq!(num(2711810.0, 0), "2,711,810");
        assert_eq!(num(1234567.891, 2), "1,234,567.89");
        assert_eq!(num(-5.245, 0), "−5");
        assert_eq!(num(-5.245, 1), "−5.2");
        assert_eq!(num(-0.04, 1), "0.0");
        assert_eq!(times(1.807, 2), "1.81×");
        assert_eq!(percent(3.937, 1), "3.9%");
        assert_eq!(yes_no(false), "no");
    }
}
