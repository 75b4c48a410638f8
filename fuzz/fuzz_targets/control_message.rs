//! Control-connection message bodies: a known message, a skipped unknown type, or an error; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qsi_daemon::tunnel::control;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(m)) = control::decode(data) {
        let wire = control::encode(&m);
        assert_eq!(control::decode(&wire[4..]).ok().flatten(), Some(m));
    }
});
