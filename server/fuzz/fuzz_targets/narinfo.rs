//! The narinfo parser: never panics, and whatever it accepts renders to a document that
//! parses back to the same value (so no accepted field can add lines of its own to a served
//! narinfo), and rendering is stable.
#![no_main]

use garret_core::nix::NarInfo;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(info) = NarInfo::parse(text) else {
        return;
    };
    let rendered = info.render();
    let again = match NarInfo::parse(&rendered) {
        Ok(again) => again,
        Err(e) => panic!("accepted narinfo renders to one that is refused: {e}\n{rendered}"),
    };
    assert_eq!(info, again, "render/parse round trip changed the narinfo");
    assert_eq!(rendered, again.render());
});
