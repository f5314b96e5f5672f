//! `kiln pki` flag parsers: untrusted command-line text becomes typed, checked values here,
//! once (clap reports their errors with exit code 2).

use std::net::IpAddr;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// `--days` bounds (100 years at most keeps every date inside X.509's range).
const MAX_DAYS: i64 = 36_500;

pub(super) fn parse_days(s: &str) -> Result<i64, String> {
    match s.parse::<i64>() {
        Ok(d) if (1..=MAX_DAYS).contains(&d) => Ok(d),
        _ => Err(format!("expected a number of days from 1 to {MAX_DAYS}")),
    }
}

/// RFC 3339, converted to UTC and whole seconds; years 1950–9999 (X.509's UTCTime starts at
/// 1950, GeneralizedTime ends at 9999).
pub(super) fn parse_time(s: &str) -> Result<OffsetDateTime, String> {
    let t = OffsetDateTime::parse(s, &Rfc3339)
        .map_err(|e| format!("expected an RFC 3339 time like 2026-01-01T00:00:00Z: {e}"))?
        .to_offset(time::UtcOffset::UTC);
    if !(1950..=9999).contains(&t.year()) {
        return Err("the year must be from 1950 to 9999".into());
    }
    t.replace_nanosecond(0).map_err(|e| e.to_string())
}

/// A file name stem: letters, digits, `.`, `_`, `-`; not starting with `.`; not `ca` (that
/// would replace the CA).
pub(super) fn parse_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !ok {
        return Err(
            "expected 1-64 letters, digits, '.', '_' or '-', not starting with '.' (it names \
             the files DIR/NAME.pem and DIR/NAME.key)"
                .into(),
        );
    }
    if s == "ca" {
        return Err("\"ca\" is the CA's own file name (DIR/ca.pem, DIR/ca.key)".into());
    }
    Ok(s.to_owned())
}

/// A subject common name: 1-64 characters (X.520's upper bound), no control characters.
pub(super) fn parse_cn(s: &str) -> Result<String, String> {
    if s.is_empty() || s.chars().count() > 64 || s.chars().any(char::is_control) {
        return Err("expected 1-64 characters, no control characters".into());
    }
    Ok(s.to_owned())
}

/// A DNS name as webpki accepts it in a SAN: labels of letters, digits and `-` (not at either
/// end), at most 63 bytes each and 253 in all; `*.` allowed as the whole first label.
pub(super) fn parse_dns(s: &str) -> Result<String, String> {
    let err = || format!("{s:?} is not a DNS name (labels of letters, digits and '-')");
    let rest = s.strip_prefix("*.").unwrap_or(s);
    if rest.is_empty() || s.len() > 253 {
        return Err(err());
    }
    for label in rest.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !ok {
            return Err(err());
        }
    }
    if rest.parse::<IpAddr>().is_ok() {
        return Err(format!("{s:?} is an IP address: use --ip"));
    }
    Ok(s.to_ascii_lowercase())
}

/// An absolute URI: `scheme:rest`, printable ASCII without spaces. A `spiffe://` URI must
/// also have a trust domain and a path (SPIFFE ID: `spiffe://trust-domain/path`).
pub(super) fn parse_uri(s: &str) -> Result<String, String> {
    let err = |why: &str| format!("{s:?} is not a URI: {why}");
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(err("only printable ASCII without spaces"));
    }
    let Some((scheme, rest)) = s.split_once(':') else {
        return Err(err(
            "expected scheme:..., e.g. spiffe://kiln.test/tenant/alpha",
        ));
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !scheme_ok || rest.is_empty() {
        return Err(err(
            "expected scheme:..., e.g. spiffe://kiln.test/tenant/alpha",
        ));
    }
    if scheme.eq_ignore_ascii_case("spiffe") {
        let id = rest.strip_prefix("//").unwrap_or("");
        match id.split_once('/') {
            Some((domain, path)) if !domain.is_empty() && !path.is_empty() => {}
            _ => return Err(err("a SPIFFE ID is spiffe://TRUST-DOMAIN/PATH")),
        }
    }
    Ok(s.to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::pki::rfc3339;

    #[test]
    fn names_that_would_escape_dir_or_replace_the_ca_are_refused() {
        for bad in ["", "ca", "../x", "a/b", ".hidden", "sp ace"] {
            assert!(parse_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_name("kilnd-1.a_b").unwrap(), "kilnd-1.a_b");
    }

    #[test]
    fn dns_names_follow_webpki_syntax() {
        for good in ["localhost", "kilnd.internal", "*.kiln.test", "a-b.c9"] {
            assert!(parse_dns(good).is_ok(), "{good:?}");
        }
        for bad in ["", "-a.b", "a..b", "a_b", "*", "127.0.0.1", "a b"] {
            assert!(parse_dns(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn uris_need_a_scheme_and_spiffe_ids_a_trust_domain_and_path() {
        assert!(parse_uri("spiffe://kiln.test/tenant/alpha").is_ok());
        assert!(parse_uri("urn:kiln:tenant:alpha").is_ok());
        for bad in [
            "alpha",
            "spiffe://kiln.test",
            "spiffe:///x",
            "1x:y",
            "a b:c",
            "x:",
        ] {
            assert!(parse_uri(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn times_are_rfc3339_in_x509_range() {
        let t = parse_time("2030-01-01T01:00:00+01:00").unwrap();
        assert_eq!(rfc3339(t), "2030-01-01T00:00:00Z");
        assert!(parse_time("2030-01-01").is_err());
        assert!(parse_time("1949-12-31T23:59:59Z").is_err());
    }
}
