//! Kubernetes resource quantities (`500m`, `1.5Gi`, `1e3`), parsed exactly enough to
//! validate and compare them. k8s-openapi keeps quantities as plain strings.

/// The value in nano-units (10⁻⁹): exact for every suffix, fractions below a nano-unit
/// are rounded up as Kubernetes does.
pub fn parse(raw: &str) -> Result<i128, String> {
    let (negative, unsigned) = match raw.as_bytes().first() {
        Some(b'-') => (true, &raw[1..]),
        Some(b'+') => (false, &raw[1..]),
        _ => (false, raw),
    };
    let number_len = unsigned
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(unsigned.len());
    let (number, suffix) = unsigned.split_at(number_len);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return Err("a quantity starts with a number".into());
    }
    if fraction.contains('.') {
        return Err("more than one decimal point".into());
    }
    let (binary_power, decimal_exponent) = suffix_scale(suffix)?;

    let digits = format!("{whole}{fraction}");
    let digits = digits.trim_start_matches('0');
    if digits.len() > 30 {
        return Err("too many digits".into());
    }
    let mantissa: i128 = if digits.is_empty() {
        0
    } else {
        digits.parse().map_err(|_| "not a number".to_string())?
    };
    let too_large = || "too large".to_string();
    let mut value = mantissa
        .checked_mul(1024i128.checked_pow(binary_power).ok_or_else(too_large)?)
        .ok_or_else(too_large)?;
    let scale = 9 + decimal_exponent - fraction.len() as i64;
    if value != 0 && scale > 0 {
        let factor = 10i128
            .checked_pow(u32::try_from(scale).map_err(|_| too_large())?)
            .ok_or_else(too_large)?;
        value = value.checked_mul(factor).ok_or_else(too_large)?;
    } else if value != 0 && scale < 0 {
        value = match 10i128.checked_pow(u32::try_from(-scale).unwrap_or(u32::MAX)) {
            Some(divisor) => (value + divisor - 1) / divisor,
            None => 1,
        };
    }
    Ok(if negative { -value } else { value })
}

/// (power of 1024, power of 10) of a suffix.
fn suffix_scale(suffix: &str) -> Result<(u32, i64), String> {
    Ok(match suffix {
        "" => (0, 0),
        "n" => (0, -9),
        "u" => (0, -6),
        "m" => (0, -3),
        "k" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        "Ki" => (1, 0),
        "Mi" => (2, 0),
        "Gi" => (3, 0),
        "Ti" => (4, 0),
        "Pi" => (5, 0),
        "Ei" => (6, 0),
        _ => {
            let exponent = suffix
                .strip_prefix(['e', 'E'])
                .and_then(|e| e.parse::<i64>().ok())
                .filter(|e| e.abs() <= 100)
                .ok_or_else(|| format!("unknown suffix {suffix:?}"))?;
            (0, exponent)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::parse;

    const NANO: i128 = 1_000_000_000;

    #[test]
    fn values() {
        let cases: &[(&str, i128)] = &[
            ("1", NANO),
            ("100m", NANO / 10),
            ("0.1", NANO / 10),
            ("1.5Gi", 3 * 512 * 1024 * 1024 * NANO),
            ("500Mi", 500 * 1024 * 1024 * NANO),
            ("1Gi", 1024 * 1024 * 1024 * NANO),
            ("1G", 1_000_000_000 * NANO),
            ("1e3", 1000 * NANO),
            ("1E3", 1000 * NANO),
            ("2E", 2_000_000_000_000_000_000 * NANO),
            ("1Ei", (1i128 << 60) * NANO),
            ("+5k", 5000 * NANO),
            ("-1", -NANO),
            ("0", 0),
            (".5", NANO / 2),
            ("5.", 5 * NANO),
            ("3n", 3),
            ("2u", 2000),
        ];
        for (raw, want) in cases {
            assert_eq!(parse(raw), Ok(*want), "{raw}");
        }
        assert_eq!(parse("1e-12"), Ok(1), "below a nano-unit rounds up");
    }

    #[test]
    fn rejects() {
        for raw in [
            "", "Gi", "1 Gi", "1GB", "1.2.3", "abc", "1x", "1e", "--1", "1e999",
        ] {
            assert!(parse(raw).is_err(), "{raw:?} must be rejected");
        }
    }
}
