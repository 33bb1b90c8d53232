//! Store paths, store path hashes, base names and store directories: never panic, and the
//! pieces of an accepted path agree with the whole.
#![no_main]

use garret_core::nix::fields::validate_store_dir;
use garret_core::nix::store_path::{
    split_base_name, validate_base_name, validate_name, StorePath, StorePathHash, HASH_LEN,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(path) = StorePath::parse(s) {
        assert_eq!(path.as_str(), s);
        assert_eq!(path.to_string(), s);
        let base = path.base_name();
        assert_eq!(format!("{}/{base}", path.store_dir()), s);
        assert_eq!(format!("{}-{}", path.hash(), path.name()), base);
        assert_eq!(path.hash().as_str().len(), HASH_LEN);
        validate_store_dir(path.store_dir()).expect("store dir of an accepted path");
        validate_base_name(base).expect("base name of an accepted path");
        validate_name(path.name()).expect("name of an accepted path");
        assert_eq!(StorePath::parse(path.as_str()).ok(), Some(path.clone()));
    }
    if let Ok((hash, name)) = split_base_name(s) {
        assert_eq!(format!("{hash}-{name}"), s);
        assert!(validate_base_name(s).is_ok());
    } else {
        assert!(validate_base_name(s).is_err());
    }
    if let Ok(hash) = StorePathHash::parse(s) {
        assert_eq!(hash.as_str(), s);
        let via_serde: StorePathHash =
            serde_json::from_value(serde_json::Value::String(s.to_owned()))
                .expect("serde accepts what parse accepts");
        assert_eq!(via_serde, hash);
    }
    let _ = validate_name(s);
    let _ = validate_store_dir(s);
});
