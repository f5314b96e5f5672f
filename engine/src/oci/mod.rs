//! OCI image formats: deterministic layer tars, image config/manifest/index, exporters, import.
