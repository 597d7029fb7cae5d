"""Validate webake SBOMs with third-party libraries (see requirements-test.txt).

usage: validate_sbom.py spdx FILE | cyclonedx FILE
Exit 0 when valid; 1 with the errors on stdout; 3 when a validator is not installed.
"""
import json
import sys

kind, path = sys.argv[1], sys.argv[2]
try:
    from packageurl import PackageURL
    if kind == "spdx":
        from spdx_tools.spdx.parser.parse_anything import parse_file
        from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document
    else:
        from cyclonedx.schema import SchemaVersion
        from cyclonedx.validation.json import JsonStrictValidator
except ImportError as e:
    print(f"missing validator: {e}")
    sys.exit(3)

with open(path) as f:
    text = f.read()
doc = json.loads(text)
errors = []
if kind == "spdx":
    parsed = parse_file(path)
    errors += [m.validation_message for m in validate_full_spdx_document(parsed, "SPDX-2.3")]
    purls = [r["referenceLocator"] for p in doc["packages"] for r in p.get("externalRefs", []) if r["referenceType"] == "purl"]
else:
    err = JsonStrictValidator(SchemaVersion.V1_5).validate_str(text, all_errors=True)
    if err is not None:
        errors += [str(e.data.message) if hasattr(e.data, "message") else str(e) for e in err]
    purls = [c["purl"] for c in doc.get("components", []) if "purl" in c]
# Each purl must parse and print back identically with the reference implementation.
for p in purls:
    again = PackageURL.from_string(p).to_string()
    if again != p:
        errors.append(f"purl {p} round-trips as {again}")
if errors:
    print("\n".join(errors))
    sys.exit(1)
print(f"valid, {len(purls)} purls")
