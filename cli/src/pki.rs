//! `kiln pki init|issue`: a development PKI for kilnd's mutual TLS (issue 8). One CA
//! (ECDSA P-256), server certificates (EKU serverAuth, DNS/IP SANs) and tenant client
//! certificates (EKU clientAuth, SAN URIs such as `spiffe://kiln.test/tenant/alpha`, subject
//! CN), all shaped so that rustls' `WebPkiClientVerifier`/`WebPkiServerVerifier` accept them:
//! random positive 16-byte serials, SKI on every certificate, AKI on every issued one.
//!
//! Private keys are PKCS#8 PEM, created with mode 0600 and `O_EXCL`; nothing is overwritten
//! without `--force` (which replaces files by an atomic rename of a fresh 0600 file).
//!
//! This is a development helper: a production deployment brings its own CA or SPIFFE/SPIRE
//! (README, "Mutual TLS for kilnd").

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::commands::{Failure, usage};

mod flags;
use flags::{parse_cn, parse_days, parse_dns, parse_name, parse_time, parse_uri};

/// The CA's file names inside `--dir`.
const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key";

/// How far `not_before` is set back from now when only `--days` is given, so that a peer
/// whose clock is a little behind does not see a certificate from the future.
const BACKDATE: time::Duration = time::Duration::minutes(5);

/// Serial numbers: 16 random bytes (CA/Browser Forum asks for at least 64 bits of entropy;
/// RFC 5280 allows up to 20 octets).
const SERIAL_LEN: usize = 16;

/// Development PKI subcommands.
#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Create a development CA: DIR/ca.pem (certificate) and DIR/ca.key (PKCS#8 PEM, mode
    /// 0600). DIR is created (mode 0700) if missing. Refuses to overwrite without --force.
    ///
    /// Examples:
    ///   kiln pki init --dir pki
    ///   kiln pki init --dir pki --name "team-a dev CA" --days 90
    #[command(verbatim_doc_comment)]
    Init(InitArgs),
    /// Issue a server or client certificate signed by DIR's CA: DIR/NAME.pem and DIR/NAME.key
    /// (mode 0600).
    ///
    /// kilnd identifies a tenant by its client certificate's SAN URI, or failing that its
    /// subject CN.
    ///
    /// Examples:
    ///   kiln pki issue --dir pki server --name kilnd
    ///   kiln pki issue --dir pki server --name kilnd --dns kilnd.internal --ip 10.0.0.7
    ///   kiln pki issue --dir pki client --name alpha --uri spiffe://kiln.test/tenant/alpha
    ///   kiln pki issue --dir pki client --name old --not-before 2020-01-01T00:00:00Z \
    ///       --not-after 2020-01-02T00:00:00Z        # an expired certificate, for tests
    #[command(verbatim_doc_comment)]
    Issue(IssueArgs),
}

/// `kiln pki init` flags.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Directory to write ca.pem and ca.key into.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// The CA's subject common name.
    #[arg(long, default_value = "kiln dev CA", value_parser = parse_cn)]
    name: String,
    /// Validity in days, from now.
    #[arg(long, default_value_t = 365, value_parser = parse_days)]
    days: i64,
    /// Replace an existing ca.pem/ca.key (every certificate issued by the old CA stops
    /// verifying against the new one).
    #[arg(long)]
    force: bool,
}

/// `kiln pki issue` flags.
#[derive(Debug, Args)]
pub struct IssueArgs {
    /// The directory `kiln pki init` wrote (ca.pem, ca.key); the certificate is written there.
    #[arg(long, value_name = "DIR", global = true)]
    dir: Option<PathBuf>,
    /// Replace an existing NAME.pem/NAME.key.
    #[arg(long, global = true)]
    force: bool,
    #[command(subcommand)]
    kind: IssueKind,
}

#[derive(Debug, Subcommand)]
enum IssueKind {
    /// A server certificate (EKU serverAuth) for kilnd. Without --dns/--ip: DNS localhost and
    /// IP 127.0.0.1.
    ///
    /// Examples:
    ///   kiln pki issue --dir pki server --name kilnd
    ///   kiln pki issue --dir pki server --name kilnd --dns kilnd.internal --dns localhost --ip ::1
    #[command(verbatim_doc_comment)]
    Server(ServerArgs),
    /// A tenant's client certificate (EKU clientAuth): SAN URIs and subject CN (default NAME).
    ///
    /// Examples:
    ///   kiln pki issue --dir pki client --name alpha --uri spiffe://kiln.test/tenant/alpha
    ///   kiln pki issue --dir pki client --name beta --cn beta --days 1
    #[command(verbatim_doc_comment)]
    Client(ClientArgs),
}

#[derive(Debug, Args)]
struct ServerArgs {
    /// File name stem: writes DIR/NAME.pem and DIR/NAME.key; also the subject CN.
    #[arg(long, value_parser = parse_name)]
    name: String,
    /// DNS name SAN (repeatable; `*.` wildcard allowed as the first label).
    #[arg(long = "dns", value_name = "HOST", value_parser = parse_dns)]
    dns: Vec<String>,
    /// IP address SAN (repeatable).
    #[arg(long = "ip", value_name = "IP")]
    ip: Vec<IpAddr>,
    #[command(flatten)]
    validity: ValidityArgs,
}

#[derive(Debug, Args)]
struct ClientArgs {
    /// File name stem: writes DIR/NAME.pem and DIR/NAME.key; the default subject CN.
    #[arg(long, value_parser = parse_name)]
    name: String,
    /// URI SAN naming the tenant, e.g. spiffe://kiln.test/tenant/alpha (repeatable).
    #[arg(long = "uri", value_name = "URI", value_parser = parse_uri)]
    uri: Vec<String>,
    /// Subject common name (default: NAME); kilnd's fallback when there is no SAN URI.
    #[arg(long, value_name = "CN", value_parser = parse_cn)]
    cn: Option<String>,
    #[command(flatten)]
    validity: ValidityArgs,
}

/// Validity period of an issued certificate.
#[derive(Debug, Args)]
struct ValidityArgs {
    /// Validity in days from --not-before (default: now, less 5 minutes for clock skew).
    #[arg(long, default_value_t = 30, value_parser = parse_days, conflicts_with = "not_after")]
    days: i64,
    /// Start of validity, RFC 3339 (e.g. 2026-01-01T00:00:00Z).
    #[arg(long, value_name = "RFC3339", value_parser = parse_time)]
    not_before: Option<OffsetDateTime>,
    /// End of validity, RFC 3339. With a time in the past this makes an expired certificate,
    /// for testing that peers refuse it.
    #[arg(long, value_name = "RFC3339", value_parser = parse_time)]
    not_after: Option<OffsetDateTime>,
}

/// Runs a `kiln pki` subcommand.
pub fn run(cmd: PkiCommand) -> Result<(), Failure> {
    match cmd {
        PkiCommand::Init(a) => init(&a),
        PkiCommand::Issue(a) => issue(a),
    }
}

fn init(a: &InitArgs) -> Result<(), Failure> {
    let now = now();
    let not_before = now - BACKDATE;
    let not_after = add_days(now, a.days)?;
    let key = KeyPair::generate().context("generating the CA key")?;

    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(&a.name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(random_serial()?);
    params.not_before = not_before;
    params.not_after = not_after;
    let cert = params
        .self_signed(&key)
        .context("self-signing the CA certificate")?;

    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&a.dir)
        .with_context(|| format!("creating {}", a.dir.display()))?;
    let (cert_path, key_path) = (a.dir.join(CA_CERT), a.dir.join(CA_KEY));
    write_pair(
        &cert_path,
        &cert.pem(),
        &key_path,
        &key.serialize_pem(),
        a.force,
    )?;

    eprintln!(
        "wrote {} (CA certificate) and {} (CA private key, mode 0600)",
        cert_path.display(),
        key_path.display()
    );
    eprintln!("  subject:  CN={}", a.name);
    eprintln!("  key:      ECDSA P-256; basic constraints CA:TRUE; key usage keyCertSign, cRLSign");
    print_validity(params.serial_number.as_ref(), not_before, not_after);
    println!("{}", cert_path.display());
    Ok(())
}

fn issue(a: IssueArgs) -> Result<(), Failure> {
    let Some(dir) = a.dir else {
        return Err(usage(
            "kiln pki issue: --dir DIR is required (the directory `kiln pki init` wrote)".into(),
        ));
    };
    let (name, kind, sans, cn, eku, validity) = match a.kind {
        IssueKind::Server(s) => {
            let (dns, ip) = if s.dns.is_empty() && s.ip.is_empty() {
                (
                    vec!["localhost".to_owned()],
                    vec![IpAddr::from([127, 0, 0, 1])],
                )
            } else {
                (s.dns, s.ip)
            };
            let mut sans = Vec::new();
            for d in dns {
                sans.push(SanType::DnsName(ia5(d)?));
            }
            sans.extend(ip.into_iter().map(SanType::IpAddress));
            let cn = s.name.clone();
            (
                s.name,
                "server",
                sans,
                cn,
                ExtendedKeyUsagePurpose::ServerAuth,
                s.validity,
            )
        }
        IssueKind::Client(c) => {
            let sans = c
                .uri
                .into_iter()
                .map(|u| ia5(u).map(SanType::URI))
                .collect::<Result<Vec<_>, _>>()?;
            let cn = c.cn.unwrap_or_else(|| c.name.clone());
            (
                c.name,
                "client",
                sans,
                cn,
                ExtendedKeyUsagePurpose::ClientAuth,
                c.validity,
            )
        }
    };
    let (not_before, not_after) = validity.period()?;

    let ca = Ca::load(&dir)?;
    let key = KeyPair::generate().context("generating the key")?;
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(&cn);
    params.subject_alt_names = sans;
    // ExplicitNoCa writes basicConstraints CA:FALSE, and with it the SKI.
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![eku];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial()?);
    params.not_before = not_before;
    params.not_after = not_after;
    let cert = params
        .signed_by(&key, &ca.issuer)
        .with_context(|| format!("signing the {kind} certificate"))?;

    let (cert_path, key_path) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    write_pair(
        &cert_path,
        &cert.pem(),
        &key_path,
        &key.serialize_pem(),
        a.force,
    )?;

    eprintln!(
        "wrote {} ({kind} certificate) and {} (private key, mode 0600)",
        cert_path.display(),
        key_path.display()
    );
    eprintln!("  subject:  CN={cn}");
    if params.subject_alt_names.is_empty() {
        eprintln!("  SANs:     none (kilnd falls back to the subject CN)");
    } else {
        let sans: Vec<String> = params.subject_alt_names.iter().map(san_text).collect();
        eprintln!("  SANs:     {}", sans.join(", "));
    }
    let eku = match kind {
        "server" => "serverAuth",
        _ => "clientAuth",
    };
    eprintln!("  key:      ECDSA P-256; extended key usage {eku}");
    eprintln!(
        "  issuer:   {} ({})",
        ca.subject,
        dir.join(CA_CERT).display()
    );
    print_validity(params.serial_number.as_ref(), not_before, not_after);
    if not_after > ca.not_after {
        eprintln!(
            "warning: the certificate outlives its CA (CA not after {})",
            rfc3339(ca.not_after)
        );
    }
    if not_after <= now() {
        eprintln!("warning: the certificate has already expired");
    }
    println!("{}", cert_path.display());
    Ok(())
}

impl ValidityArgs {
    /// The validity period: explicit times, or `--days` from --not-before (default: now less
    /// [`BACKDATE`]). Usage error unless not_before < not_after.
    fn period(&self) -> Result<(OffsetDateTime, OffsetDateTime), Failure> {
        let not_before = self.not_before.unwrap_or_else(|| now() - BACKDATE);
        let not_after = match self.not_after {
            Some(t) => t,
            None => add_days(not_before, self.days)?,
        };
        if not_before >= not_after {
            return Err(usage(format!(
                "--not-before {} must be earlier than --not-after {}",
                rfc3339(not_before),
                rfc3339(not_after)
            )));
        }
        Ok((not_before, not_after))
    }
}

/// The CA read back from `DIR/ca.pem` and `DIR/ca.key`.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    subject: String,
    not_after: OffsetDateTime,
}

impl Ca {
    /// Loads the CA and checks that the certificate is a CA and that the key is its key (a
    /// mismatch would yield certificates whose signatures never verify).
    fn load(dir: &Path) -> Result<Self, Failure> {
        let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
        let missing = |p: &Path, e: std::io::Error| {
            anyhow::anyhow!(
                "reading {}: {e} (run `kiln pki init --dir {}` first)",
                p.display(),
                dir.display()
            )
        };
        let cert_pem = std::fs::read_to_string(&cert_path).map_err(|e| missing(&cert_path, e))?;
        let key_pem = std::fs::read_to_string(&key_path).map_err(|e| missing(&key_path, e))?;
        let key = KeyPair::from_pem(&key_pem)
            .with_context(|| format!("{}: not a PKCS#8 PEM private key", key_path.display()))?;

        let bad = |what: String| anyhow::anyhow!("{}: {what}", cert_path.display());
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
            .map_err(|e| bad(format!("not a PEM certificate: {e}")))?;
        let x509 = pem
            .parse_x509()
            .map_err(|e| bad(format!("not an X.509 certificate: {e}")))?;
        if !x509.is_ca() {
            return Err(bad("not a CA certificate (basic constraints CA:FALSE)".into()).into());
        }
        if x509.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(bad(format!(
                "the key in {} is not this certificate's key",
                key_path.display()
            ))
            .into());
        }
        let subject = x509.subject().to_string();
        let not_after = x509.validity().not_after.to_datetime();
        let issuer = Issuer::from_ca_cert_der(&pem.contents.clone().into(), key)
            .map_err(|e| bad(format!("reading the CA's name and key identifier: {e}")))?;
        Ok(Self {
            issuer,
            subject,
            not_after,
        })
    }
}

/// Writes a certificate (mode 0644) and its private key (mode 0600). Without `force`, neither
/// file may exist (checked for both before either is written; `O_EXCL` closes the race).
/// With `force`, each is written to a fresh temporary file and renamed over the old one, so
/// the key never passes through a file with wider permissions.
fn write_pair(
    cert_path: &Path,
    cert_pem: &str,
    key_path: &Path,
    key_pem: &str,
    force: bool,
) -> Result<(), Failure> {
    if force {
        replace(key_path, 0o600, key_pem.as_bytes())?;
        replace(cert_path, 0o644, cert_pem.as_bytes())?;
        return Ok(());
    }
    for p in [key_path, cert_path] {
        if p.symlink_metadata().is_ok() {
            return Err(exists(p));
        }
    }
    create_new(key_path, 0o600, key_pem.as_bytes())?;
    if let Err(e) = create_new(cert_path, 0o644, cert_pem.as_bytes()) {
        let _ = std::fs::remove_file(key_path);
        return Err(e);
    }
    Ok(())
}

fn exists(p: &Path) -> Failure {
    anyhow::anyhow!(
        "{} already exists; not overwriting it (pass --force to replace it)",
        p.display()
    )
    .into()
}

fn create_new(path: &Path, mode: u32, contents: &[u8]) -> Result<(), Failure> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                exists(path)
            } else {
                anyhow::anyhow!("creating {}: {e}", path.display()).into()
            }
        })?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn replace(path: &Path, mode: u32, contents: &[u8]) -> Result<(), Failure> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    create_new(&tmp, mode, contents)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow::anyhow!("replacing {}: {e}", path.display())
    })?;
    Ok(())
}

/// 16 random bytes from the kernel, top bit clear (a positive INTEGER) and second bit set
/// (no leading zero octet, so the encoding is exactly 16 bytes).
fn random_serial() -> Result<SerialNumber, Failure> {
    let mut bytes = [0u8; SERIAL_LEN];
    let mut filled = 0;
    while filled < SERIAL_LEN {
        filled +=
            rustix::rand::getrandom(&mut bytes[filled..], rustix::rand::GetRandomFlags::empty())
                .context("getrandom for a serial number")?;
    }
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn common_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn ia5(s: String) -> Result<Ia5String, Failure> {
    Ia5String::try_from(s.clone()).map_err(|e| usage(format!("{s:?}: {e}")))
}

fn san_text(san: &SanType) -> String {
    match san {
        SanType::DnsName(d) => format!("DNS:{}", d.as_str()),
        SanType::IpAddress(ip) => format!("IP:{ip}"),
        SanType::URI(u) => format!("URI:{}", u.as_str()),
        other => format!("{other:?}"),
    }
}

fn print_validity(
    serial: Option<&SerialNumber>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) {
    if let Some(s) = serial {
        eprintln!("  serial:   {s}");
    }
    eprintln!(
        "  validity: {} .. {}",
        rfc3339(not_before),
        rfc3339(not_after)
    );
}

/// Now, in UTC and whole seconds (X.509 times have no fractions here).
fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| OffsetDateTime::now_utc())
}

fn add_days(t: OffsetDateTime, days: i64) -> Result<OffsetDateTime, Failure> {
    t.checked_add(time::Duration::days(days))
        .filter(|t| t.year() <= 9999)
        .ok_or_else(|| usage(format!("{days} days from {} is past year 9999", rfc3339(t))))
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_positive_and_sixteen_bytes() {
        let a = random_serial().unwrap();
        let b = random_serial().unwrap();
        assert_eq!(a.len(), SERIAL_LEN);
        assert_eq!(a.to_bytes()[0] & 0xc0, 0x40);
        assert_ne!(a, b);
    }
}
