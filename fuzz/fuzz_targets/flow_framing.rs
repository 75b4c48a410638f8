//! The TLS/TCP flow framing: decoding arbitrary bytes never panics, and every decoded frame re-encodes to
//! bytes that decode to the same frame.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use qsi_daemon::tunnel::frame::{Frame, RecvWindow};

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let mut window = RecvWindow::new();
    while let Ok(Some(frame)) = Frame::decode(&mut buf) {
        let mut again = BytesMut::new();
        frame.encode(&mut again);
        assert_eq!(Frame::decode(&mut again), Ok(Some(frame.clone())));
        assert!(again.is_empty());
        if let Frame::Data { data, .. } = &frame {
            if window.on_data(data.len()).is_ok() {
                let _ = window.on_consumed(data.len());
            }
        }
    }
});
