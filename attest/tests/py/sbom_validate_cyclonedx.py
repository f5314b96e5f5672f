#!/usr/bin/env python3
"""Validates CycloneDX 1.6 JSON files with cyclonedx-python-lib's strict JSON validator.

Usage: sbom_validate_cyclonedx.py FILE...
Exit 0: all valid; 1: a file is invalid (errors on stderr); 3: the library is missing
(install it with `KILN_DEPS_FULL=1 scripts/deps.sh`).
"""
import sys

try:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator
except ImportError as e:  # pragma: no cover - reported to the Rust test
    print(f"cyclonedx-python-lib[json-validation] missing ({e}); run KILN_DEPS_FULL=1 scripts/deps.sh",
          file=sys.stderr)
    sys.exit(3)


def main(paths):
    validator = JsonStrictValidator(SchemaVersion.V1_6)
    bad = 0
    for path in paths:
        with open(path, encoding="utf-8") as f:
            error = validator.validate_str(f.read())
        if error is not None:
            bad += 1
            print(f"{path}: {error}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
