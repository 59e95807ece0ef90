//! The shapes of Arvados identifiers: container and collection UUIDs, portable data hashes,
//! and the image ids `docker save` names its tars after.
//!
//! One place for them, checked on bytes: every value comes from a record or a flag, so it may
//! hold any text, and none of these may panic on it. Whether an id names something that exists
//! is for the stores to say.

/// `zzzzz-<infix>-0123456789abcde`: a 5-character cluster id, the object type's infix, 15
/// characters; lowercase letters and digits.
fn is_uuid_of(s: &str, infix: &[u8; 5]) -> bool {
    let b = s.as_bytes();
    b.len() == 27
        && b[5] == b'-'
        && &b[6..11] == infix
        && b[11] == b'-'
        && b[..5]
            .iter()
            .chain(&b[12..])
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

/// `zzzzz-dz642-0123456789abcde`.
pub fn is_container_uuid(s: &str) -> bool {
    is_uuid_of(s, b"dz642")
}

/// `zzzzz-4zz18-0123456789abcde`.
pub fn is_collection_uuid(s: &str) -> bool {
    is_uuid_of(s, b"4zz18")
}

/// A portable data hash: 32 lowercase hex digits, `+`, a decimal size.
pub fn is_pdh(s: &str) -> bool {
    match s.split_once('+') {
        Some((hash, size)) => {
            is_lower_hex(hash, 32) && !size.is_empty() && size.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

/// `sha256:<64 hex>` or bare 64 hex, as `docker save` names image tars.
pub fn is_image_id(s: &str) -> bool {
    is_lower_hex(s.strip_prefix("sha256:").unwrap_or(s), 64)
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_uuids() {
        assert!(is_container_uuid("zzzzz-dz642-0123456789abcde"));
        for bad in [
            "",
            "zzzzz-dz642-0123456789abcd",
            "zzzzz-dz642-0123456789abcdef",
            "zzzzz-4zz18-0123456789abcde",
            "zzzzz_dz642-0123456789abcde",
            "ZZZZZ-dz642-0123456789abcde",
            "zzzzz-dz642-0123456789abcd-",
            // 27 bytes, with a multi-byte character across bytes 4-5 and 11-12.
            "zzzz\u{e9}dz642-0123456789abcde",
            "zzzzz-dz64\u{e9}0123456789abcde",
            "zzzzz-dz642-0123456789abc\u{e9}",
        ] {
            assert!(!is_container_uuid(bad), "{bad:?}");
        }
    }

    #[test]
    fn collection_uuids() {
        assert!(is_collection_uuid("zzzzz-4zz18-0123456789abcde"));
        for bad in [
            "",
            "zzzzz-4zz18-0123456789abcd",
            "zzzzz-4zz18-0123456789abcdef",
            "zzzzz-j7d0g-0123456789abcde",
            "zzzzz-4zz18-0123456789ABCDE",
            "zzzz\u{e9}4zz18-0123456789abcde",
            "zzzzz\u{e9}zz18-0123456789abcde",
            "zzzzz-4zz1\u{e9}0123456789abcde",
            "\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}z",
        ] {
            assert!(!is_collection_uuid(bad), "{bad:?}");
        }
    }

    #[test]
    fn portable_data_hashes() {
        assert!(is_pdh("d41d8cd98f00b204e9800998ecf8427e+0"));
        assert!(is_pdh("acbd18db4cc2f85cedef654fccc4a4d8+3"));
        for bad in [
            "",
            "d41d8cd98f00b204e9800998ecf8427e",
            "D41D8CD98F00B204E9800998ECF8427E+0",
            "d41d8cd98f00b204e9800998ecf8427e+",
            "d41d8cd98f00b204e9800998ecf8427+0",
            "d41d8cd98f00b204e9800998ecf8427ee+0",
            "d41d8cd98f00b204e9800998ecf8427e+1a",
            "d41d8cd98f00b204e9800998ecf842\u{e9}+0",
            "foo+3",
        ] {
            assert!(!is_pdh(bad), "{bad:?}");
        }
    }

    #[test]
    fn image_ids() {
        let hex = "d8309758b8fe2c81034ffc8a10c36460b77db7bc5e7b448c4e5b684f9d95a678";
        assert!(is_image_id(hex));
        assert!(is_image_id(&format!("sha256:{hex}")));
        assert!(!is_image_id("busybox:latest"));
        assert!(!is_image_id(&format!("sha256:{}", &hex[1..])));
        assert!(!is_image_id(&format!("{hex}0")));
        assert!(!is_image_id(&format!("sha256:{}\u{e9}", &hex[2..])));
        assert!(!is_image_id(&hex.to_uppercase()));
    }
}
