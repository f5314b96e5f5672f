//! Sigstore trusted roots (`application/vnd.dev.sigstore.trustedroot+json;version=0.1|0.2`):
//! transparency logs, CT logs, certificate authorities and timestamp authorities, each with
//! its validity window. Parsing only; the key material is checked when it is used.

use serde_json::Value;

use super::json::{FieldError, Obj, as_obj, path};

/// Largest trusted root [`parse`] reads, in bytes.
pub const MAX_TRUSTED_ROOT_SIZE: usize = 4 * 1024 * 1024;
/// Most logs or authorities of each kind.
pub const MAX_ENTRIES: usize = 256;

/// Why a trusted root is unusable, or a log is not trusted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// Larger than [`MAX_TRUSTED_ROOT_SIZE`].
    #[error("trusted root is {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// Size of the input.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Not JSON.
    #[error("trusted root is not valid JSON: {reason}")]
    Json {
        /// What the parser said.
        reason: String,
    },
    /// Not a trusted root v0.1 or v0.2.
    #[error("unknown trusted root mediaType {found:?}")]
    UnknownMediaType {
        /// The mediaType found.
        found: String,
    },
    /// A field is missing, mistyped or malformed.
    #[error("malformed trusted root: {0}")]
    Field(#[from] FieldError),
    /// No transparency log of the trusted root has this key id.
    #[error("no trusted transparency log has log id {log_id}")]
    UnknownLog {
        /// The log id, hex.
        log_id: String,
    },
    /// The log's key has no `validFor.start`: the trusted root is malformed for this log.
    #[error("transparency log {log_id}: publicKey.validFor has no start")]
    MissingValidityStart {
        /// The log id, hex.
        log_id: String,
    },
    /// The log's key was not valid at the time.
    #[error("transparency log {log_id}: key not valid at {time} (valid {window})")]
    OutsideValidity {
        /// The log id, hex.
        log_id: String,
        /// The time (unix seconds).
        time: i64,
        /// The window, for the message.
        window: String,
    },
}

/// A point in time: unix seconds and nanoseconds (`0..1e9`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    /// Seconds since 1970-01-01T00:00:00Z.
    pub secs: i64,
    /// Nanoseconds within the second.
    pub nanos: u32,
}

impl Timestamp {
    /// A whole second.
    pub fn from_secs(secs: i64) -> Timestamp {
        Timestamp { secs, nanos: 0 }
    }
}

/// A closed interval of time; `end` absent = still valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidFor {
    /// `start` (required by the spec; `None` only so a malformed root can be reported when
    /// the key is used).
    pub start: Option<Timestamp>,
    /// `end`, inclusive.
    pub end: Option<Timestamp>,
}

impl ValidFor {
    /// Whether `t` is inside `[start, end]`. A missing start is never valid.
    pub fn contains(&self, t: Timestamp) -> bool {
        self.start.is_some_and(|s| s <= t) && self.end.is_none_or(|e| t <= e)
    }
}

/// A transparency log or CT log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransparencyLog {
    /// `baseUrl`.
    pub base_url: String,
    /// `hashAlgorithm` (`SHA2_256`).
    pub hash_algorithm: String,
    /// `publicKey.rawBytes`: DER SubjectPublicKeyInfo.
    pub public_key: Vec<u8>,
    /// `publicKey.keyDetails`, e.g. `PKIX_ECDSA_P256_SHA_256`, `PKIX_ED25519`.
    pub key_details: String,
    /// `publicKey.validFor`.
    pub valid_for: ValidFor,
    /// `logId.keyId`.
    pub log_id: Vec<u8>,
}

/// `subject` of an authority.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subject {
    /// `organization`.
    pub organization: String,
    /// `commonName`.
    pub common_name: String,
}

/// A certificate or timestamp authority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateAuthority {
    /// `subject`.
    pub subject: Subject,
    /// `uri`.
    pub uri: String,
    /// `certChain.certificates[].rawBytes` (DER).
    pub cert_chain: Vec<Vec<u8>>,
    /// `validFor`.
    pub valid_for: ValidFor,
}

/// A parsed trusted root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedRoot {
    /// `tlogs`: Rekor instances.
    pub tlogs: Vec<TransparencyLog>,
    /// `ctlogs`: certificate transparency logs.
    pub ctlogs: Vec<TransparencyLog>,
    /// `certificateAuthorities`: Fulcio instances.
    pub certificate_authorities: Vec<CertificateAuthority>,
    /// `timestampAuthorities`: RFC 3161 TSAs.
    pub timestamp_authorities: Vec<CertificateAuthority>,
}

impl TrustedRoot {
    /// The transparency log with this `logId.keyId`, whose key's validity has a start.
    pub fn tlog(&self, log_id: &[u8]) -> Result<&TransparencyLog, TrustError> {
        let log = self
            .tlogs
            .iter()
            .find(|l| l.log_id == log_id)
            .ok_or_else(|| TrustError::UnknownLog {
                log_id: hex::encode(log_id),
            })?;
        if log.valid_for.start.is_none() {
            return Err(TrustError::MissingValidityStart {
                log_id: hex::encode(log_id),
            });
        }
        Ok(log)
    }

    /// [`TrustedRoot::tlog`], and its key valid at `time` (unix seconds; both ends inclusive).
    pub fn tlog_at(&self, log_id: &[u8], time: i64) -> Result<&TransparencyLog, TrustError> {
        let log = self.tlog(log_id)?;
        if !log.valid_for.contains(Timestamp::from_secs(time)) {
            return Err(TrustError::OutsideValidity {
                log_id: hex::encode(log_id),
                time,
                window: format!("{:?}", log.valid_for),
            });
        }
        Ok(log)
    }
}

/// Parses a trusted root.
pub fn parse(bytes: &[u8]) -> Result<TrustedRoot, TrustError> {
    if bytes.len() > MAX_TRUSTED_ROOT_SIZE {
        return Err(TrustError::TooLarge {
            size: bytes.len(),
            limit: MAX_TRUSTED_ROOT_SIZE,
        });
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| TrustError::Json {
        reason: e.to_string(),
    })?;
    let root = as_obj(&value, "")?;
    let media_type = root.req_str("mediaType")?;
    if !matches!(
        media_type,
        "application/vnd.dev.sigstore.trustedroot+json;version=0.1"
            | "application/vnd.dev.sigstore.trustedroot+json;version=0.2"
            | "application/vnd.dev.sigstore.trustedroot.v0.2+json"
    ) {
        return Err(TrustError::UnknownMediaType {
            found: media_type.chars().take(200).collect(),
        });
    }
    Ok(TrustedRoot {
        tlogs: logs(root, "tlogs")?,
        ctlogs: logs(root, "ctlogs")?,
        certificate_authorities: authorities(root, "certificateAuthorities")?,
        timestamp_authorities: authorities(root, "timestampAuthorities")?,
    })
}

fn logs(root: Obj<'_>, key: &str) -> Result<Vec<TransparencyLog>, FieldError> {
    let mut out = Vec::new();
    for (i, l) in root.arr(key, MAX_ENTRIES)?.iter().enumerate() {
        let p = format!("{key}[{i}]");
        let l = as_obj(l, &p)?;
        let pkp = path(&p, "publicKey");
        let pk = as_obj(l.req("publicKey")?, &pkp)?;
        let lip = path(&p, "logId");
        out.push(TransparencyLog {
            base_url: l.opt_str("baseUrl")?.unwrap_or_default().to_owned(),
            hash_algorithm: l.opt_str("hashAlgorithm")?.unwrap_or_default().to_owned(),
            public_key: pk.req_bytes("rawBytes")?,
            key_details: pk.opt_str("keyDetails")?.unwrap_or_default().to_owned(),
            valid_for: valid_for(pk)?,
            log_id: as_obj(l.req("logId")?, &lip)?.req_bytes("keyId")?,
        });
    }
    Ok(out)
}

fn authorities(root: Obj<'_>, key: &str) -> Result<Vec<CertificateAuthority>, FieldError> {
    let mut out = Vec::new();
    for (i, a) in root.arr(key, MAX_ENTRIES)?.iter().enumerate() {
        let p = format!("{key}[{i}]");
        let a = as_obj(a, &p)?;
        let subject = match a.opt("subject") {
            None => Subject::default(),
            Some(s) => {
                let sp = path(&p, "subject");
                let s = as_obj(s, &sp)?;
                Subject {
                    organization: s.opt_str("organization")?.unwrap_or_default().to_owned(),
                    common_name: s.opt_str("commonName")?.unwrap_or_default().to_owned(),
                }
            }
        };
        let ccp = path(&p, "certChain");
        let chain = as_obj(a.req("certChain")?, &ccp)?;
        let mut cert_chain = Vec::new();
        for (j, c) in chain.arr("certificates", MAX_ENTRIES)?.iter().enumerate() {
            let cp = format!("{ccp}.certificates[{j}]");
            cert_chain.push(as_obj(c, &cp)?.req_bytes("rawBytes")?);
        }
        out.push(CertificateAuthority {
            subject,
            uri: a.opt_str("uri")?.unwrap_or_default().to_owned(),
            cert_chain,
            valid_for: valid_for(a)?,
        });
    }
    Ok(out)
}

fn valid_for(parent: Obj<'_>) -> Result<ValidFor, FieldError> {
    let Some(v) = parent.opt("validFor") else {
        return Ok(ValidFor {
            start: None,
            end: None,
        });
    };
    let p = path(parent.path, "validFor");
    let v = as_obj(v, &p)?;
    let time = |key: &str| -> Result<Option<Timestamp>, FieldError> {
        v.opt_str(key)?
            .map(|s| {
                parse_rfc3339(s).ok_or_else(|| FieldError::Invalid {
                    field: path(&p, key),
                    reason: format!(
                        "not an RFC 3339 time: {:?}",
                        s.chars().take(40).collect::<String>()
                    ),
                })
            })
            .transpose()
    };
    Ok(ValidFor {
        start: time("start")?,
        end: time("end")?,
    })
}

/// Parses an RFC 3339 date-time (`YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, years
/// 0001..9999, no leap second) to a [`Timestamp`]. `None` when malformed.
pub fn parse_rfc3339(s: &str) -> Option<Timestamp> {
    let b = s.as_bytes();
    if b.len() < 20 || b.len() > 40 {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(range)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(
            part.iter()
                .fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0')),
        )
    };
    let sep = |i: usize, c: &[u8]| b.get(i).is_some_and(|x| c.contains(x));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if year < 1 || !(1..=12).contains(&month) || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days_in_month = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if day < 1 || day > days_in_month {
        return None;
    }
    let mut i = 19;
    let mut nanos: u32 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let digits = b.get(start..i)?;
        if digits.is_empty() || digits.len() > 9 {
            return None;
        }
        let mut n: u32 = 0;
        for k in 0..9 {
            n = n * 10 + digits.get(k).map_or(0, |d| u32::from(d - b'0'));
        }
        nanos = n;
    }
    let offset = match b.get(i..)? {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let two = |x: u8, y: u8| -> Option<i64> {
                (x.is_ascii_digit() && y.is_ascii_digit())
                    .then(|| i64::from(x - b'0') * 10 + i64::from(y - b'0'))
            };
            let (oh, om) = (two(*h1, *h2)?, two(*m1, *m2)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let o = oh * 3600 + om * 60;
            if *sign == b'+' { o } else { -o }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86400 + hour * 3600 + minute * 60 + second - offset;
    Some(Timestamp { secs, nanos })
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        let t = |s| parse_rfc3339(s).map(|t| (t.secs, t.nanos));
        assert_eq!(t("1970-01-01T00:00:00Z"), Some((0, 0)));
        assert_eq!(t("2023-07-12T15:56:36Z"), Some((1_689_177_396, 0)));
        assert_eq!(
            t("2022-12-31T23:59:59.999Z"),
            Some((1_672_531_199, 999_000_000))
        );
        assert_eq!(t("2021-01-12T11:53:27Z"), Some((1_610_452_407, 0)));
        assert_eq!(t("2023-07-12T17:56:36+02:00"), Some((1_689_177_396, 0)));
        assert_eq!(t("2000-02-29T00:00:00Z"), Some((951_782_400, 0)));
        for bad in [
            "",
            "2023-07-12 15:56:36Z",
            "2023-07-12T15:56:36",
            "2023-02-29T00:00:00Z",
            "2023-13-01T00:00:00Z",
            "2023-07-12T24:00:00Z",
            "2023-07-12T15:56:60Z",
            "2023-07-12T15:56:36.Z",
            "2023-07-12T15:56:36.1234567891Z",
            "2023-07-12T15:56:36+2:00",
            "-023-07-12T15:56:36Z",
            "2023-07-12T15:56:36Zjunk",
            "２023-07-12T15:56:36Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn validity_is_closed_and_needs_a_start() {
        let v = ValidFor {
            start: Some(Timestamp::from_secs(10)),
            end: Some(Timestamp::from_secs(20)),
        };
        assert!(v.contains(Timestamp::from_secs(10)));
        assert!(v.contains(Timestamp::from_secs(20)));
        assert!(!v.contains(Timestamp::from_secs(21)));
        assert!(!v.contains(Timestamp::from_secs(9)));
        let open = ValidFor {
            start: None,
            end: None,
        };
        assert!(!open.contains(Timestamp::from_secs(0)));
    }
}
