//! kiln's own schema validation of SBOM documents (JSON Schema, formats checked), with the
//! schemas read from a directory at run time: nothing is fetched over the network.

use std::path::{Path, PathBuf};

use jsonschema::{Retrieve, Uri};
use serde_json::Value;

/// Where CycloneDX schemas say they live; a `$ref` to a file beside them resolves here.
const CYCLONEDX_SCHEMA_BASE: &str = "http://cyclonedx.org/schema/";
/// The CycloneDX 1.6 BOM schema's file name.
pub const CYCLONEDX_1_6_SCHEMA: &str = "bom-1.6.schema.json";
/// The only files a CycloneDX schema may pull in (by `$ref`) from the schema directory.
const CYCLONEDX_REFERENCED: &[&str] = &["spdx.schema.json", "jsf-0.82.schema.json"];
/// Largest schema file read.
const SCHEMA_BYTES: u64 = 16 << 20;

/// Validates `doc` against `bom-1.6.schema.json` in `schema_dir` (which must also hold
/// `spdx.schema.json` and `jsf-0.82.schema.json`, the files it references).
///
/// # Errors
/// Every validation error (`<instance path>: <message>`), or the one reason the schema could
/// not be loaded.
pub fn validate_cyclonedx(doc: &Value, schema_dir: &Path) -> Result<(), Vec<String>> {
    let schema = load(&schema_dir.join(CYCLONEDX_1_6_SCHEMA)).map_err(|e| vec![e])?;
    let retriever = LocalSchemas {
        dir: schema_dir.to_path_buf(),
    };
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .with_retriever(retriever)
        .build(&schema)
        .map_err(|e| vec![format!("{CYCLONEDX_1_6_SCHEMA}: {e}")])?;
    collect(&validator, doc)
}

/// Validates `doc` against the SPDX 2.3 JSON schema at `schema_path` (self-contained).
///
/// # Errors
/// Every validation error, or the one reason the schema could not be loaded.
pub fn validate_spdx(doc: &Value, schema_path: &Path) -> Result<(), Vec<String>> {
    let schema = load(schema_path).map_err(|e| vec![e])?;
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .offline()
        .build(&schema)
        .map_err(|e| vec![format!("{}: {e}", schema_path.display())])?;
    collect(&validator, doc)
}

fn collect(validator: &jsonschema::Validator, doc: &Value) -> Result<(), Vec<String>> {
    let errors: Vec<String> = validator
        .iter_errors(doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn load(path: &Path) -> Result<Value, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(SCHEMA_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Resolves `http://cyclonedx.org/schema/<name>` to `<dir>/<name>` for the referenced
/// schemas only; anything else is refused (never fetched).
struct LocalSchemas {
    dir: PathBuf,
}

impl Retrieve for LocalSchemas {
    fn retrieve(
        &self,
        uri: &Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let s = uri.as_str();
        let name = s
            .strip_prefix(CYCLONEDX_SCHEMA_BASE)
            .filter(|n| CYCLONEDX_REFERENCED.contains(n))
            .ok_or_else(|| format!("{s}: not a schema kiln resolves locally"))?;
        Ok(load(&self.dir.join(name))?)
    }
}
