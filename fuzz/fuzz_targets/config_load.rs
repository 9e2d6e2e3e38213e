//! Arbitrary text as a config file: loading must return a config or a list
//! of errors, never panic, and every error must name a line inside the text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match smarthost::config::load_str(text, "fuzz.toml", std::path::Path::new("/nonexistent")) {
        Ok(cfg) => assert!(cfg.warnings.iter().all(|w| w.line <= text.lines().count() + 1)),
        Err(e) => {
            assert!(!e.0.is_empty());
            for err in &e.0 {
                assert!(err.line <= text.lines().count() + 1, "{err}");
            }
        }
    }
});
