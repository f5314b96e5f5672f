//! Package URLs (<https://github.com/package-url/purl-spec>):
//! `pkg:<type>/<namespace>/<name>@<version>?<qualifiers>`.
//!
//! Every component is percent-encoded except the unreserved characters `A-Z a-z 0-9 . - _ ~`,
//! so an epoch's `:` is `%3A`, `+` is `%2B` and an npm scope's `@` is `%40` — the form syft
//! and the purl test suite give for `pkg:deb/debian/libc6@2.36-9%2Bdeb12u4`. Qualifiers are
//! sorted by key; empty values are dropped.

/// A package URL being built.
pub(crate) struct Purl<'a> {
    ty: &'a str,
    namespace: Vec<&'a str>,
    name: &'a str,
    version: &'a str,
    qualifiers: Vec<(&'a str, String)>,
}

impl<'a> Purl<'a> {
    /// `pkg:<ty>/<name>@<version>`.
    pub(crate) fn new(ty: &'a str, name: &'a str, version: &'a str) -> Self {
        Self {
            ty,
            namespace: Vec::new(),
            name,
            version,
            qualifiers: Vec::new(),
        }
    }

    /// Adds namespace segments (each one encoded on its own; empty ones dropped).
    pub(crate) fn namespace(mut self, segments: impl IntoIterator<Item = &'a str>) -> Self {
        self.namespace
            .extend(segments.into_iter().filter(|s| !s.is_empty()));
        self
    }

    /// Adds a qualifier; `None` or an empty value is dropped.
    pub(crate) fn qualifier(mut self, key: &'a str, value: Option<String>) -> Self {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            self.qualifiers.push((key, v));
        }
        self
    }

    /// The canonical string.
    pub(crate) fn build(mut self) -> String {
        let mut out = format!("pkg:{}/", self.ty);
        for seg in &self.namespace {
            out.push_str(&encode(seg));
            out.push('/');
        }
        out.push_str(&encode(self.name));
        if !self.version.is_empty() {
            out.push('@');
            out.push_str(&encode(self.version));
        }
        self.qualifiers.sort();
        for (i, (k, v)) in self.qualifiers.iter().enumerate() {
            out.push(if i == 0 { '?' } else { '&' });
            out.push_str(k);
            out.push('=');
            out.push_str(&encode(v));
        }
        out
    }
}

/// Percent-encodes everything but the unreserved characters.
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_plus_and_scope_are_encoded() {
        let p = Purl::new("deb", "libc6", "1:2.36-9+deb12u4")
            .namespace(["debian"])
            .qualifier("distro", Some("debian-12".into()))
            .qualifier("arch", Some("amd64".into()))
            .build();
        assert_eq!(
            p,
            "pkg:deb/debian/libc6@1%3A2.36-9%2Bdeb12u4?arch=amd64&distro=debian-12"
        );
        let n = Purl::new("npm", "core", "7.0.0")
            .namespace(["@babel"])
            .build();
        assert_eq!(n, "pkg:npm/%40babel/core@7.0.0");
    }
}
