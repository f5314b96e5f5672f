#!/usr/bin/env python3
"""Validates OCI documents against the image-spec JSON Schemas (draft 4).

Usage: validate_oci_schemas.py SCHEMA_DIR SCHEMA DOC [SCHEMA DOC]...

Schemas are registered under both URIs their relative `$ref`s resolve to. Used by kiln's tests
(engine/tests/oci_export.rs, cli/tests/interop.rs): Python's `jsonschema` is an independent
implementation, and needs no extra Rust dependency tree on the 2-core builders.
Exit 0 when every document validates, 1 otherwise (each error printed).
"""
import json
import pathlib
import sys

import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

d = pathlib.Path(sys.argv[1])
resources = []
for f in d.glob("*.json"):
    r = Resource.from_contents(json.loads(f.read_text()), default_specification=DRAFT4)
    for base in ("https://opencontainers.org/schema/", "https://opencontainers.org/schema/image/"):
        resources.append((base + f.name, r))
registry = Registry().with_resources(resources)
failed = 0
for schema_name, doc in zip(sys.argv[2::2], sys.argv[3::2]):
    schema = json.loads((d / schema_name).read_text())
    cls = jsonschema.validators.validator_for(schema)
    v = cls(schema, registry=registry, format_checker=cls.FORMAT_CHECKER)
    errors = list(v.iter_errors(json.loads(pathlib.Path(doc).read_text())))
    for e in errors:
        print(f"{doc} against {schema_name}: {e.message} at {list(e.absolute_path)}")
    failed += bool(errors)
sys.exit(1 if failed else 0)
