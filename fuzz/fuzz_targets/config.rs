//! The site config parser and validator: any text gives a config or an error naming a field, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        // Relative paths resolve under a directory that does not exist, so file fields fail cleanly.
        let _ = qsi_daemon::config::Config::from_toml(text, Path::new("fuzz.toml"), Path::new("/nonexistent-fuzz"));
    }
});
