//! The SBOM as a policy sees it: packages with versions, purls and declared licenses (the
//! `sbom` field of the `kiln.export` and `kiln.verify` inputs, `policy/schema/`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Sbom;

/// A summary of an SBOM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Number of packages.
    pub package_count: usize,
    /// The packages, in the SBOM's order.
    pub packages: Vec<SummaryPackage>,
}

/// One package of a [`Summary`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SummaryPackage {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Ecosystem (`deb`, `apk`, `python`, `npm`, `cargo`, `go`, `binary`, or the purl type).
    #[serde(rename = "type")]
    pub kind: String,
    /// Package URL.
    pub purl: Option<String>,
    /// Declared licenses (SPDX ids or expressions, or free text as the package declares).
    pub licenses: Vec<String>,
}

impl Summary {
    /// The summary of a catalog.
    pub fn of(sbom: &Sbom) -> Self {
        let packages: Vec<SummaryPackage> = sbom
            .packages
            .iter()
            .map(|p| SummaryPackage {
                name: p.name.clone(),
                version: p.version.clone(),
                kind: p.kind.as_str().to_owned(),
                purl: Some(p.purl.clone()),
                licenses: p.licenses.clone(),
            })
            .collect();
        Self {
            package_count: packages.len(),
            packages,
        }
    }

    /// The summary of an SPDX 2.3 JSON document (the packages with a purl: the image and
    /// operating-system entries are not packages a policy judges).
    pub fn from_spdx(doc: &Value) -> Self {
        let extracted = |id: &str| -> Option<String> {
            doc["hasExtractedLicensingInfos"]
                .as_array()?
                .iter()
                .find(|l| l["licenseId"] == id)
                .and_then(|l| l["name"].as_str().or(l["extractedText"].as_str()))
                .map(str::to_owned)
        };
        let mut packages = Vec::new();
        for p in doc["packages"].as_array().into_iter().flatten() {
            let purl = p["externalRefs"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| r["referenceType"] == "purl")
                .and_then(|r| r["referenceLocator"].as_str())
                .map(str::to_owned);
            let Some(purl) = purl else { continue };
            let licenses = match p["licenseDeclared"].as_str() {
                None | Some("NOASSERTION") | Some("NONE") => Vec::new(),
                Some(l) if l.starts_with("LicenseRef-") => {
                    vec![extracted(l).unwrap_or_else(|| l.to_owned())]
                }
                Some(l) => vec![l.to_owned()],
            };
            packages.push(SummaryPackage {
                name: p["name"].as_str().unwrap_or_default().to_owned(),
                version: p["versionInfo"].as_str().unwrap_or_default().to_owned(),
                kind: purl_type(&purl),
                purl: Some(purl),
                licenses,
            });
        }
        Self {
            package_count: packages.len(),
            packages,
        }
    }

    /// The summary of a CycloneDX 1.6 JSON document.
    pub fn from_cyclonedx(doc: &Value) -> Self {
        let mut packages = Vec::new();
        for c in doc["components"].as_array().into_iter().flatten() {
            let purl = c["purl"].as_str().map(str::to_owned);
            let mut licenses = Vec::new();
            for l in c["licenses"].as_array().into_iter().flatten() {
                if let Some(e) = l["expression"].as_str() {
                    licenses.push(e.to_owned());
                } else if let Some(id) = l["license"]["id"].as_str() {
                    licenses.push(id.to_owned());
                } else if let Some(n) = l["license"]["name"].as_str() {
                    licenses.push(n.to_owned());
                }
            }
            packages.push(SummaryPackage {
                name: c["name"].as_str().unwrap_or_default().to_owned(),
                version: c["version"].as_str().unwrap_or_default().to_owned(),
                kind: purl.as_deref().map(purl_type).unwrap_or_default(),
                purl,
                licenses,
            });
        }
        Self {
            package_count: packages.len(),
            packages,
        }
    }
}

/// The ecosystem of a purl, named as [`super::PackageKind::as_str`] names it, so a policy sees
/// the same `type` at export (from the catalog) and at verify (from the document):
/// `pkg:deb/debian/bash@5` → `deb`, `pkg:pypi/…` → `python`, `pkg:golang/…` → `go`,
/// `pkg:generic/…` → `binary`.
fn purl_type(purl: &str) -> String {
    let ty = purl
        .strip_prefix("pkg:")
        .and_then(|r| r.split('/').next())
        .unwrap_or_default();
    match ty {
        "pypi" => "python",
        "golang" => "go",
        "generic" => "binary",
        other => other,
    }
    .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purl_types_map_to_catalog_kinds() {
        assert_eq!(purl_type("pkg:deb/debian/bash@5.2"), "deb");
        assert_eq!(purl_type("pkg:pypi/jinja2@3.1.4"), "python");
        assert_eq!(purl_type("pkg:golang/example.com/x@v1"), "go");
        assert_eq!(purl_type("pkg:generic/busybox@1.36"), "binary");
        assert_eq!(purl_type("pkg:npm/%40babel/core@7"), "npm");
    }
}
