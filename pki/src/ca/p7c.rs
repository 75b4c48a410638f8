//! Certs-only CMS SignedData bundles (`.p7c`, RFC 5652 with no signers), which the FPKI publishes
//! at AIA caIssuers and SIA caRepository URLs.

/// DER TLV with definite length.
pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// id-signedData 1.2.840.113549.1.7.2, DER.
const ID_SIGNED_DATA: [u8; 11] = [
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02,
];
/// id-data 1.2.840.113549.1.7.1, DER.
const ID_DATA: [u8; 11] = [
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01,
];

/// Bundles DER certificates into a certs-only SignedData ContentInfo. The SET OF is sorted by
/// encoding, as DER requires.
pub fn certs_only(certs: &[Vec<u8>]) -> Vec<u8> {
    let mut sorted: Vec<&Vec<u8>> = certs.iter().collect();
    sorted.sort();
    sorted.dedup();
    let certs_content: Vec<u8> = sorted.into_iter().flatten().copied().collect();
    let mut signed_data = Vec::new();
    signed_data.extend(tlv(0x02, &[1])); // version 1
    signed_data.extend(tlv(0x31, &[])); // digestAlgorithms: empty SET
    signed_data.extend(tlv(0x30, &ID_DATA)); // encapContentInfo { id-data }
    signed_data.extend(tlv(0xa0, &certs_content)); // certificates [0] IMPLICIT SET OF
    signed_data.extend(tlv(0x31, &[])); // signerInfos: empty SET
    let mut ci = ID_SIGNED_DATA.to_vec();
    ci.extend(tlv(0xa0, &tlv(0x30, &signed_data)));
    tlv(0x30, &ci)
}

#[cfg(test)]
mod tests {
    #[test]
    fn long_lengths_are_minimal() {
        let t = super::tlv(0x04, &[0u8; 300]);
        assert_eq!(&t[..4], &[0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(super::tlv(0x04, &[0u8; 127])[1], 127);
        assert_eq!(&super::tlv(0x04, &[0u8; 128])[1..3], &[0x81, 128]);
    }
}
