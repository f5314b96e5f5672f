//! `kiln pki init|issue` through the real binary (issue 8): the certificates verify with
//! `openssl verify` and carry the SANs, EKUs and validity asked for; keys are 0600; nothing is
//! overwritten without --force; an expired certificate is refused; bad flags exit 2; and
//! rustls (what kilnd uses) completes a TLS 1.3 handshake with client authentication using
//! them, and refuses the wrong ones. The openssl checks print why they skip without openssl.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use support::kiln::{Kiln, Run, which};

const ALPHA: &str = "spiffe://kiln.test/tenant/alpha";

/// A store, and a temporary directory to write the PKI into (`DIR/pki`).
struct Pki {
    kiln: Kiln,
    tmp: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        Self {
            kiln: Kiln::empty(),
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    fn dir(&self) -> std::path::PathBuf {
        self.tmp.path().join("pki")
    }

    /// `kiln pki ARGS…` in the temporary directory.
    fn run(&self, args: &[&str]) -> Run {
        let mut full = vec!["pki"];
        full.extend_from_slice(args);
        self.kiln.run(self.tmp.path(), full)
    }

    /// init + a default server certificate `kilnd` + a client `alpha` with ALPHA's URI.
    fn standard() -> Self {
        let p = Self::new();
        p.run(&["init", "--dir", "pki"]).ok();
        p.run(&["issue", "--dir", "pki", "server", "--name", "kilnd"])
            .ok();
        p.run(&[
            "issue", "--dir", "pki", "client", "--name", "alpha", "--uri", ALPHA,
        ])
        .ok();
        p
    }

    fn file(&self, name: &str) -> std::path::PathBuf {
        self.dir().join(name)
    }

    fn cert(&self, name: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(self.file(&format!("{name}.pem"))).unwrap()
    }

    fn key(&self, name: &str) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_file(self.file(&format!("{name}.key"))).unwrap()
    }

    fn roots(&self) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert("ca")).unwrap();
        Arc::new(roots)
    }
}

/// `openssl ARGS…`: (exit code, stdout + stderr).
fn openssl(cwd: &Path, args: &[&str]) -> (i32, String) {
    let o = Command::new("openssl")
        .current_dir(cwd)
        .args(args)
        .output()
        .unwrap();
    let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&o.stderr));
    (o.status.code().unwrap_or(-1), text)
}

fn openssl_or_skip() -> bool {
    let ok = which("openssl");
    if !ok {
        println!("skipped: needs openssl");
    }
    ok
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

#[test]
fn openssl_verifies_the_chain_and_sees_sans_ekus_and_validity() {
    if !openssl_or_skip() {
        return;
    }
    let p = Pki::standard();
    let dir = p.dir();
    for leaf in ["kilnd.pem", "alpha.pem"] {
        let (code, out) = openssl(&dir, &["verify", "-CAfile", "ca.pem", leaf]);
        assert_eq!(code, 0, "{leaf}: {out}");
        assert!(out.contains(&format!("{leaf}: OK")), "{out}");
    }

    let text = |f: &str| openssl(&dir, &["x509", "-noout", "-text", "-in", f]).1;
    let ca = text("ca.pem");
    assert!(ca.contains("CA:TRUE"), "{ca}");
    assert!(ca.contains("Certificate Sign, CRL Sign"), "{ca}");
    assert!(ca.contains("Subject: CN = kiln dev CA"), "{ca}");
    assert!(ca.contains("ASN1 OID: prime256v1"), "{ca}");

    let server = text("kilnd.pem");
    assert!(server.contains("TLS Web Server Authentication"), "{server}");
    assert!(
        !server.contains("TLS Web Client Authentication"),
        "{server}"
    );
    assert!(
        server.contains("DNS:localhost, IP Address:127.0.0.1"),
        "{server}"
    );
    assert!(server.contains("Subject: CN = kilnd"), "{server}");
    assert!(server.contains("CA:FALSE"), "{server}");

    let client = text("alpha.pem");
    assert!(client.contains(&format!("URI:{ALPHA}")), "{client}");
    assert!(client.contains("TLS Web Client Authentication"), "{client}");
    assert!(
        !client.contains("TLS Web Server Authentication"),
        "{client}"
    );
    assert!(client.contains("Subject: CN = alpha"), "{client}");
    assert!(client.contains("Issuer: CN = kiln dev CA"), "{client}");
    assert!(client.contains("Authority Key Identifier"), "{client}");
    assert!(client.contains("Subject Key Identifier"), "{client}");

    // Serial: 16 bytes, positive (openssl prints "xx:xx:…" on the line after the label).
    let serial = client
        .lines()
        .skip_while(|l| !l.contains("Serial Number:"))
        .nth(1)
        .unwrap()
        .trim();
    assert_eq!(serial.split(':').count(), 16, "{serial}");
    let serial_ca = ca
        .lines()
        .skip_while(|l| !l.contains("Serial Number:"))
        .nth(1)
        .unwrap()
        .trim();
    assert_ne!(serial, serial_ca);

    // Default validity: 30 days for leaves, 365 for the CA.
    let day = 86_400;
    let checkend = |f: &str, secs: u64| {
        openssl(
            &dir,
            &["x509", "-noout", "-in", f, "-checkend", &secs.to_string()],
        )
        .0
    };
    assert_eq!(checkend("alpha.pem", 29 * day), 0);
    assert_eq!(checkend("alpha.pem", 31 * day), 1);
    assert_eq!(checkend("ca.pem", 364 * day), 0);
    assert_eq!(checkend("ca.pem", 366 * day), 1);
}

#[test]
fn explicit_validity_and_custom_sans_are_written_as_given() {
    if !openssl_or_skip() {
        return;
    }
    let p = Pki::new();
    p.run(&[
        "init",
        "--dir",
        "pki",
        "--name",
        "team dev CA",
        "--days",
        "3650",
    ])
    .ok();
    let r = p
        .run(&[
            "issue",
            "--dir",
            "pki",
            "client",
            "--name",
            "beta",
            "--cn",
            "beta-cn",
            "--uri",
            "spiffe://kiln.test/tenant/beta",
            "--uri",
            "urn:kiln:tenant:beta",
            "--not-before",
            "2030-01-01T00:00:00Z",
            "--not-after",
            "2031-06-30T12:00:00+02:00",
        ])
        .ok();
    // What was written is reported on stderr.
    for want in [
        "beta.pem",
        "beta.key",
        "mode 0600",
        "URI:spiffe://kiln.test/tenant/beta",
        "2030-01-01T00:00:00Z .. 2031-06-30T10:00:00Z",
    ] {
        assert!(r.stderr.contains(want), "{want:?} in {}", r.stderr);
    }
    let dir = p.dir();
    let (_, dates) = openssl(
        &dir,
        &[
            "x509",
            "-noout",
            "-startdate",
            "-enddate",
            "-subject",
            "-in",
            "beta.pem",
        ],
    );
    assert!(
        dates.contains("notBefore=Jan  1 00:00:00 2030 GMT"),
        "{dates}"
    );
    assert!(
        dates.contains("notAfter=Jun 30 10:00:00 2031 GMT"),
        "{dates}"
    );
    assert!(dates.contains("subject=CN = beta-cn"), "{dates}");
    let (_, text) = openssl(&dir, &["x509", "-noout", "-text", "-in", "beta.pem"]);
    assert!(
        text.contains("URI:spiffe://kiln.test/tenant/beta, URI:urn:kiln:tenant:beta"),
        "{text}"
    );

    p.run(&[
        "issue",
        "--dir",
        "pki",
        "server",
        "--name",
        "kilnd",
        "--dns",
        "kilnd.internal",
        "--ip",
        "10.0.0.7",
        "--ip",
        "::1",
    ])
    .ok();
    let (_, text) = openssl(&dir, &["x509", "-noout", "-text", "-in", "kilnd.pem"]);
    assert!(
        text.contains("DNS:kilnd.internal, IP Address:10.0.0.7, IP Address:0:0:0:0:0:0:0:1"),
        "{text}"
    );
    assert!(
        !text.contains("localhost"),
        "no default SANs once some are given: {text}"
    );
}

#[test]
fn private_keys_are_mode_0600() {
    let p = Pki::standard();
    for key in ["ca.key", "kilnd.key", "alpha.key"] {
        let mode = fs::metadata(p.file(key)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{key}");
        let pem = fs::read_to_string(p.file(key)).unwrap();
        assert!(
            pem.starts_with("-----BEGIN PRIVATE KEY-----"),
            "{key}: PKCS#8"
        );
    }
    let dir_mode = fs::metadata(p.dir()).unwrap().permissions().mode() & 0o777;
    assert_eq!(dir_mode, 0o700);
}

#[test]
fn nothing_is_overwritten_without_force() {
    let p = Pki::standard();
    let ca_before = fs::read(p.file("ca.pem")).unwrap();
    let key_before = fs::read(p.file("ca.key")).unwrap();

    let r = p.run(&["init", "--dir", "pki"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("already exists"), "{}", r.stderr);
    assert!(r.stderr.contains("--force"), "{}", r.stderr);
    assert_eq!(fs::read(p.file("ca.pem")).unwrap(), ca_before);
    assert_eq!(fs::read(p.file("ca.key")).unwrap(), key_before);

    let alpha_before = fs::read(p.file("alpha.pem")).unwrap();
    let r = p.run(&["issue", "--dir", "pki", "client", "--name", "alpha"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("alpha.key already exists"),
        "{}",
        r.stderr
    );
    assert_eq!(fs::read(p.file("alpha.pem")).unwrap(), alpha_before);

    // A leftover key alone also blocks, and its certificate is not written either.
    fs::remove_file(p.file("kilnd.pem")).unwrap();
    let r = p.run(&["issue", "--dir", "pki", "server", "--name", "kilnd"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(!p.file("kilnd.pem").exists());

    // --force replaces, and the new key is still 0600.
    fs::set_permissions(p.file("alpha.key"), fs::Permissions::from_mode(0o644)).unwrap();
    p.run(&[
        "issue", "--dir", "pki", "--force", "client", "--name", "alpha",
    ])
    .ok();
    assert_ne!(fs::read(p.file("alpha.pem")).unwrap(), alpha_before);
    let mode = fs::metadata(p.file("alpha.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    p.run(&["init", "--dir", "pki", "--force"]).ok();
    assert_ne!(fs::read(p.file("ca.key")).unwrap(), key_before);
    let leftovers: Vec<_> = fs::read_dir(p.dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn an_expired_certificate_fails_openssl_verify() {
    if !openssl_or_skip() {
        return;
    }
    let p = Pki::standard();
    let r = p
        .run(&[
            "issue",
            "--dir",
            "pki",
            "client",
            "--name",
            "old",
            "--uri",
            "spiffe://kiln.test/tenant/old",
            "--not-before",
            "2020-01-01T00:00:00Z",
            "--not-after",
            "2020-01-02T00:00:00Z",
        ])
        .ok();
    assert!(r.stderr.contains("already expired"), "{}", r.stderr);
    let (code, out) = openssl(&p.dir(), &["verify", "-CAfile", "ca.pem", "old.pem"]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("certificate has expired"), "{out}");
}

#[test]
fn bad_flags_are_usage_errors_with_clear_messages() {
    let p = Pki::standard();
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "issue",
                "--dir",
                "pki",
                "client",
                "--name",
                "x",
                "--not-before",
                "2030-01-02T00:00:00Z",
                "--not-after",
                "2030-01-01T00:00:00Z",
            ],
            "must be earlier than --not-after",
        ),
        (
            &[
                "issue",
                "--dir",
                "pki",
                "client",
                "--name",
                "x",
                "--not-after",
                "tomorrow",
            ],
            "RFC 3339",
        ),
        (
            &[
                "issue",
                "--dir",
                "pki",
                "client",
                "--name",
                "x",
                "--days",
                "3",
                "--not-after",
                "2030-01-01T00:00:00Z",
            ],
            "cannot be used with",
        ),
        (
            &[
                "issue", "--dir", "pki", "client", "--name", "x", "--days", "0",
            ],
            "number of days",
        ),
        (
            &[
                "issue", "--dir", "pki", "client", "--name", "x", "--uri", "alpha",
            ],
            "not a URI",
        ),
        (
            &[
                "issue",
                "--dir",
                "pki",
                "client",
                "--name",
                "x",
                "--uri",
                "spiffe://kiln.test",
            ],
            "spiffe://TRUST-DOMAIN/PATH",
        ),
        (
            &["issue", "--dir", "pki", "client", "--name", "ca"],
            "CA's own file name",
        ),
        (
            &["issue", "--dir", "pki", "client", "--name", "../x"],
            "letters, digits",
        ),
        (
            &[
                "issue", "--dir", "pki", "server", "--name", "s", "--ip", "1.2.3",
            ],
            "invalid",
        ),
        (
            &[
                "issue", "--dir", "pki", "server", "--name", "s", "--dns", "a_b",
            ],
            "not a DNS name",
        ),
        (&["issue", "server", "--name", "s"], "--dir DIR is required"),
        (&["issue", "--dir", "pki", "client"], "--name"),
        (&["init"], "--dir"),
    ];
    for (args, want) in cases {
        let r = p.run(args);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(
            r.stderr.contains(want),
            "{args:?}: {want:?} in {}",
            r.stderr
        );
    }
    // Nothing was written by any of them.
    assert!(!p.file("x.pem").exists() && !p.file("x.key").exists());

    // Issuing without a CA says what to run.
    let r = p.run(&["issue", "--dir", "nowhere", "client", "--name", "x"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("kiln pki init --dir nowhere"),
        "{}",
        r.stderr
    );

    // A CA key that is not the certificate's key is refused before anything is issued.
    fs::copy(p.file("alpha.key"), p.file("ca.key")).unwrap();
    let r = p.run(&["issue", "--dir", "pki", "client", "--name", "y"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("not this certificate's key"),
        "{}",
        r.stderr
    );
    assert!(!p.file("y.pem").exists());
}

#[test]
fn dir_may_follow_the_kind() {
    let p = Pki::standard();
    p.run(&["issue", "client", "--dir", "pki", "--name", "gamma"])
        .ok();
    assert!(p.file("gamma.pem").exists());
}

#[test]
fn help_teaches_with_examples() {
    let p = Pki::new();
    let top = p.kiln.run(p.tmp.path(), ["--help"]).ok().stdout;
    assert!(top.contains("pki"), "{top}");
    let pki = p.run(&["--help"]).ok().stdout;
    assert!(pki.contains("kiln pki init --dir pki"), "{pki}");
    assert!(pki.contains("SPIFFE"), "{pki}");
    let client = p.run(&["issue", "client", "--help"]).ok().stdout;
    assert!(client.contains("--uri <URI>"), "{client}");
    assert!(client.contains("--not-after <RFC3339>"), "{client}");
    assert!(
        client.contains("kiln pki issue --dir pki client --name alpha"),
        "{client}"
    );
}

/// Moves TLS records between the two ends until both finish the handshake or one fails.
fn handshake(
    client: &mut rustls::ClientConnection,
    server: &mut rustls::ServerConnection,
) -> Result<(), rustls::Error> {
    fn pump<A, B>(
        from: &mut rustls::ConnectionCommon<A>,
        to: &mut rustls::ConnectionCommon<B>,
    ) -> Result<bool, rustls::Error> {
        let mut buf = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut buf).unwrap();
        }
        let moved = !buf.is_empty();
        let mut rd = &buf[..];
        while !rd.is_empty() {
            to.read_tls(&mut rd).unwrap();
            to.process_new_packets()?;
        }
        Ok(moved)
    }
    for _ in 0..20 {
        let a = pump(&mut **client, &mut **server)?;
        let b = pump(&mut **server, &mut **client)?;
        if !a && !b && !client.is_handshaking() && !server.is_handshaking() {
            return Ok(());
        }
    }
    panic!("handshake did not finish");
}

fn server_config(p: &Pki) -> Arc<rustls::ServerConfig> {
    let verifier = WebPkiClientVerifier::builder_with_provider(p.roots(), provider())
        .build()
        .unwrap();
    Arc::new(
        rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![p.cert("kilnd")], p.key("kilnd"))
            .unwrap(),
    )
}

fn client_config(p: &Pki, name: &str) -> Arc<rustls::ClientConfig> {
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(p.roots())
            .with_client_auth_cert(vec![p.cert(name)], p.key(name))
            .unwrap(),
    )
}

#[test]
fn rustls_completes_mutual_tls_with_the_issued_certificates() {
    let p = Pki::standard();
    let mut server = rustls::ServerConnection::new(server_config(&p)).unwrap();
    let mut client = rustls::ClientConnection::new(
        client_config(&p, "alpha"),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    handshake(&mut client, &mut server).unwrap();
    // What kilnd will map to a tenant: the verified client certificate.
    let peer = server.peer_certificates().unwrap();
    assert_eq!(peer[0], p.cert("alpha"));

    // Over 127.0.0.1, the default IP SAN.
    let mut server = rustls::ServerConnection::new(server_config(&p)).unwrap();
    let mut client = rustls::ClientConnection::new(
        client_config(&p, "alpha"),
        ServerName::try_from("127.0.0.1").unwrap(),
    )
    .unwrap();
    handshake(&mut client, &mut server).unwrap();
}

#[test]
fn rustls_verifiers_accept_the_right_certificates_and_refuse_the_wrong_ones() {
    let p = Pki::standard();
    p.run(&[
        "issue",
        "--dir",
        "pki",
        "client",
        "--name",
        "old",
        "--not-before",
        "2020-01-01T00:00:00Z",
        "--not-after",
        "2020-01-02T00:00:00Z",
    ])
    .ok();
    let other = Pki::standard();
    let now = UnixTime::now();

    let clients = WebPkiClientVerifier::builder_with_provider(p.roots(), provider())
        .build()
        .unwrap();
    clients
        .verify_client_cert(&p.cert("alpha"), &[], now)
        .unwrap();
    let err = |r: Result<_, rustls::Error>| format!("{:?}", r.expect_err("refused"));
    let expired = err(clients
        .verify_client_cert(&p.cert("old"), &[], now)
        .map(|_| ()));
    assert!(expired.contains("Expired"), "{expired}");
    // A server certificate is not a client certificate (EKU).
    let eku = err(clients
        .verify_client_cert(&p.cert("kilnd"), &[], now)
        .map(|_| ()));
    assert!(eku.contains("Purpose") || eku.contains("Eku"), "{eku}");
    // Another CA's client certificate. Both CAs are "CN=kiln dev CA", so webpki finds a
    // candidate issuer by name and then rejects the signature.
    let foreign = err(clients
        .verify_client_cert(&other.cert("alpha"), &[], now)
        .map(|_| ()));
    assert!(
        foreign.contains("BadSignature") || foreign.contains("UnknownIssuer"),
        "{foreign}"
    );

    let servers =
        rustls::client::WebPkiServerVerifier::builder_with_provider(p.roots(), provider())
            .build()
            .unwrap();
    for name in ["localhost", "127.0.0.1"] {
        servers
            .verify_server_cert(
                &p.cert("kilnd"),
                &[],
                &ServerName::try_from(name).unwrap(),
                &[],
                now,
            )
            .unwrap();
    }
    let wrong_name = err(servers
        .verify_server_cert(
            &p.cert("kilnd"),
            &[],
            &ServerName::try_from("kilnd.example").unwrap(),
            &[],
            now,
        )
        .map(|_| ()));
    assert!(wrong_name.contains("NotValidForName"), "{wrong_name}");
    // A client certificate is not a server certificate.
    let eku = err(servers
        .verify_server_cert(
            &p.cert("alpha"),
            &[],
            &ServerName::try_from("localhost").unwrap(),
            &[],
            now,
        )
        .map(|_| ()));
    assert!(
        eku.contains("Purpose") || eku.contains("NotValidForName"),
        "{eku}"
    );
}
