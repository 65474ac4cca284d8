//! The top-level section structure of a WebAssembly binary, walked just far
//! enough to find, remove and append the `palisade-signature` custom
//! section. Section contents are skipped, never parsed, so this code makes
//! no claim that the rest of the binary is valid: wasmtime checks that when
//! it compiles the component.

use crate::SECTION_NAME;

/// The first four bytes of every WebAssembly binary.
const MAGIC: &[u8; 4] = b"\0asm";

/// Length of the header: the magic bytes, then the version and layer.
const HEADER_LEN: usize = 8;

/// Maximum length of a LEB128-encoded u32.
const MAX_U32_LEB_LEN: usize = 5;

/// A component, or a signature document, that cannot be read.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FormatError {
    /// The bytes do not start with the WebAssembly magic bytes.
    #[error(
        "not a WebAssembly binary (it does not start with `\\0asm`); check that the path names a compiled `.wasm` component"
    )]
    NotWasm,
    /// The section structure or the signature document is invalid.
    #[error("malformed plugin component or signature: {detail}")]
    Malformed {
        /// Description of the problem, with its byte offset where there
        /// is one.
        detail: String,
    },
}

impl FormatError {
    pub(crate) fn malformed(detail: impl Into<String>) -> Self {
        Self::Malformed {
            detail: detail.into(),
        }
    }
}

/// A component split at its embedded signature section.
#[derive(Debug)]
pub(crate) struct Located<'a> {
    /// The component without the signature section.
    pub unsigned: &'a [u8],
    /// The payload of the signature section, when there is one.
    pub payload: Option<&'a [u8]>,
}

/// Walks the top-level sections of `bytes` and splits off the signature
/// section, which must be last and appear at most once.
pub(crate) fn locate(bytes: &[u8]) -> Result<Located<'_>, FormatError> {
    if bytes.get(..MAGIC.len()) != Some(MAGIC.as_slice()) {
        return Err(FormatError::NotWasm);
    }
    if bytes.len() < HEADER_LEN {
        return Err(FormatError::malformed(format!(
            "the header is truncated: {} bytes of {HEADER_LEN}; rebuild or copy the file again",
            bytes.len()
        )));
    }
    let mut offset = HEADER_LEN;
    // Start offset of the signature section and the range of its payload.
    let mut signature: Option<(usize, usize, usize)> = None;
    while offset < bytes.len() {
        let section = read_section(bytes, offset)?;
        let is_signature = section.custom_name == Some(SECTION_NAME.as_bytes());
        if let Some((first, _, _)) = signature {
            let problem = if is_signature {
                format!("a second `{SECTION_NAME}` section starts at byte {offset}")
            } else {
                format!(
                    "section id {} at byte {offset} follows the `{SECTION_NAME}` section at byte {first}",
                    section.id
                )
            };
            return Err(FormatError::malformed(format!(
                "{problem}, but the signature must be the single last section; re-sign the component with `palisade plugin sign`"
            )));
        }
        if is_signature {
            signature = Some((offset, section.payload_start, section.end));
        }
        offset = section.end;
    }
    let located = match signature {
        Some((start, payload_start, end)) => Located {
            unsigned: bytes.get(..start).unwrap_or(bytes),
            payload: bytes.get(payload_start..end),
        },
        None => Located {
            unsigned: bytes,
            payload: None,
        },
    };
    Ok(located)
}

/// Returns `unsigned` followed by a signature section that carries
/// `payload`.
pub(crate) fn append_signature(unsigned: &[u8], payload: &[u8]) -> Result<Vec<u8>, FormatError> {
    let name = SECTION_NAME.as_bytes();
    let mut contents = Vec::with_capacity(name.len() + payload.len() + MAX_U32_LEB_LEN);
    write_u32(&mut contents, length_u32(name.len())?);
    contents.extend_from_slice(name);
    contents.extend_from_slice(payload);

    let mut out = Vec::with_capacity(unsigned.len() + contents.len() + 1 + MAX_U32_LEB_LEN);
    out.extend_from_slice(unsigned);
    out.push(0);
    write_u32(&mut out, length_u32(contents.len())?);
    out.extend_from_slice(&contents);
    Ok(out)
}

/// One top-level section: its id, where its contents end, and for a custom
/// section its name and where the payload after the name starts.
struct Section<'a> {
    id: u8,
    end: usize,
    custom_name: Option<&'a [u8]>,
    payload_start: usize,
}

fn read_section(bytes: &[u8], start: usize) -> Result<Section<'_>, FormatError> {
    let id = *bytes
        .get(start)
        .ok_or_else(|| truncated(start, "section id"))?;
    let mut offset = start + 1;
    let size = read_u32(bytes, &mut offset, "section size")?;
    let end = offset
        .checked_add(size as usize)
        .filter(|&end| end <= bytes.len())
        .ok_or_else(|| {
            FormatError::malformed(format!(
                "section id {id} at byte {start} declares {size} bytes but only {} remain; the file is truncated, so rebuild or copy it again",
                bytes.len() - offset
            ))
        })?;
    if id != 0 {
        return Ok(Section {
            id,
            end,
            custom_name: None,
            payload_start: end,
        });
    }

    // A custom section starts with its name, which must fit inside it.
    let contents = bytes.get(..end).unwrap_or(bytes);
    let name_length = read_u32(contents, &mut offset, "custom section name length")?;
    let name = offset
        .checked_add(name_length as usize)
        .and_then(|name_end| contents.get(offset..name_end))
        .ok_or_else(|| {
            FormatError::malformed(format!(
                "the name of the custom section at byte {start} is {name_length} bytes long, longer than the section"
            ))
        })?;
    Ok(Section {
        id,
        end,
        custom_name: Some(name),
        payload_start: offset + name.len(),
    })
}

/// Reads a LEB128 u32 at `*offset` and moves `*offset` past it.
fn read_u32(bytes: &[u8], offset: &mut usize, field: &str) -> Result<u32, FormatError> {
    let start = *offset;
    let mut value: u32 = 0;
    for index in 0..MAX_U32_LEB_LEN {
        let byte = *bytes
            .get(start + index)
            .ok_or_else(|| truncated(start, field))?;
        let bits = u32::from(byte & 0x7f);
        // The fifth byte carries bits 28 to 31, so only its low four bits
        // may be set.
        if index == MAX_U32_LEB_LEN - 1 && (byte & 0x70 != 0) {
            return Err(overlong(start, field));
        }
        value |= bits << (7 * index);
        if byte & 0x80 == 0 {
            *offset = start + index + 1;
            return Ok(value);
        }
    }
    Err(overlong(start, field))
}

fn write_u32(out: &mut Vec<u8>, mut value: u32) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn length_u32(length: usize) -> Result<u32, FormatError> {
    u32::try_from(length).map_err(|_| {
        FormatError::malformed(format!(
            "a section of {length} bytes does not fit the 4 GiB limit of the WebAssembly format"
        ))
    })
}

fn truncated(offset: usize, field: &str) -> FormatError {
    FormatError::malformed(format!(
        "the file ends inside the {field} at byte {offset}; the file is truncated, so rebuild or copy it again"
    ))
}

fn overlong(offset: usize, field: &str) -> FormatError {
    FormatError::malformed(format!(
        "the {field} at byte {offset} is not a valid LEB128 u32 (more than 5 bytes or above 2^32 - 1)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(value: u32) -> Vec<u8> {
        let mut out = Vec::new();
        write_u32(&mut out, value);
        out
    }

    #[test]
    fn leb128_round_trips() {
        for value in [0, 1, 127, 128, 300, 16_384, u32::MAX] {
            let bytes = encode(value);
            let mut offset = 0;
            assert_eq!(read_u32(&bytes, &mut offset, "test").unwrap(), value);
            assert_eq!(offset, bytes.len(), "{value}");
        }
    }

    #[test]
    fn leb128_accepts_padding_up_to_five_bytes() {
        let mut offset = 0;
        let padded = [0x80, 0x80, 0x80, 0x80, 0x00];
        assert_eq!(read_u32(&padded, &mut offset, "test").unwrap(), 0);
        assert_eq!(offset, 5);
    }

    #[test]
    fn leb128_rejects_overlong_and_truncated() {
        let cases: [&[u8]; 4] = [
            &[0x80, 0x80, 0x80, 0x80, 0x80, 0x00],
            &[0xff, 0xff, 0xff, 0xff, 0x1f],
            &[0x80, 0x80],
            &[],
        ];
        for bytes in cases {
            let mut offset = 0;
            let error = read_u32(bytes, &mut offset, "size").unwrap_err();
            assert!(
                matches!(error, FormatError::Malformed { .. }),
                "{bytes:?}: {error}"
            );
        }
    }

    #[test]
    fn short_or_foreign_bytes_are_not_wasm() {
        for bytes in [&b""[..], b"\0as", b"\x7fELF\x02\x01\x01\0", b"{\"a\":1}"] {
            assert_eq!(
                locate(bytes).unwrap_err(),
                FormatError::NotWasm,
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn truncated_header_is_malformed() {
        let error = locate(b"\0asm\x01\0").unwrap_err();
        assert!(error.to_string().contains("header is truncated"), "{error}");
    }

    #[test]
    fn oversized_custom_name_is_malformed() {
        // Custom section of 2 bytes whose name claims 9 bytes.
        let bytes = b"\0asm\x01\0\0\0\x00\x02\x09a";
        let error = locate(bytes).unwrap_err();
        assert!(
            error.to_string().contains("longer than the section"),
            "{error}"
        );
    }
}
