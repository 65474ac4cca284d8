//! JSON Schemas (draft 2020-12) of the `extract` action.

use palisade_sdk::{Value, json};

pub fn input() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "ioc-extractor extract input",
        "type": "object",
        "properties": {
            "text": {
                "type": "string",
                "description": "Free text to scan, such as an email body or a log line. A raw quoted-printable mail body is decoded first."
            },
            "document": {
                "description": "Any JSON value, such as an alert. Every string value is scanned at any depth; object keys and numbers are not."
            },
            "internal_networks": {
                "type": "array",
                "description": "CIDR blocks (or single addresses) to treat as internal, in addition to the built-in private, loopback, link-local, CGNAT, multicast and unique-local ranges.",
                "items": {"type": "string"}
            },
            "internal_domains": {
                "type": "array",
                "description": "Domain suffixes such as `corp.example` to treat as internal. A match covers the suffix itself and every name under it.",
                "items": {"type": "string", "minLength": 1}
            }
        },
        "anyOf": [
            {"required": ["text"]},
            {"required": ["document"]}
        ],
        "additionalProperties": false
    })
}

pub fn output() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "ioc-extractor extract output",
        "type": "object",
        "properties": {
            "observables": {
                "type": "array",
                "description": "Distinct observables sorted by type, then value.",
                "items": {
                    "type": "object",
                    "properties": {
                        "type": {
                            "enum": ["domain", "email", "ipv4", "ipv6", "md5", "sha1", "sha256", "url"]
                        },
                        "value": {
                            "type": "string",
                            "description": "Refanged and normalised: domains, email domains and hashes in lowercase, IPv6 in RFC 5952 compressed form, URL scheme and host in lowercase."
                        },
                        "internal": {
                            "type": "boolean",
                            "description": "True when the address, or the host of the URL or email, is inside a built-in or caller internal range or domain."
                        },
                        "defanged": {
                            "type": "boolean",
                            "description": "True when at least one sighting was written in defanged form."
                        },
                        "count": {
                            "type": "integer",
                            "minimum": 1,
                            "description": "Number of sightings across all scanned strings."
                        }
                    },
                    "required": ["type", "value", "internal", "defanged", "count"],
                    "additionalProperties": false
                }
            }
        },
        "required": ["observables"],
        "additionalProperties": false
    })
}
