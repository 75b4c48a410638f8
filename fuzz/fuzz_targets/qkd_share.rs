//! QKD key shares (hybrid share || SAE ID || key_ID): parsed or refused, never a panic; what parses re-encodes
//! to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qsi_daemon::config::KxGroup;
use qsi_daemon::qkd::kx::{decode_client_share, encode_client_share};

fuzz_target!(|data: &[u8]| {
    for base in [KxGroup::X25519MlKem768, KxGroup::Secp256r1MlKem768, KxGroup::MlKem1024] {
        if let Ok(s) = decode_client_share(base, data) {
            let wire = encode_client_share(s.hybrid, s.master_sae_id, s.key_id);
            assert_eq!(wire.ok().as_deref(), Some(data));
        }
    }
});
