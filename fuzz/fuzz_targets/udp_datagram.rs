//! QUIC datagrams carrying UDP services: parse arbitrary bytes without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = qsi_daemon::tunnel::udp::parse(data);
});
