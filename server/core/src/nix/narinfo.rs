//! The `.narinfo` text format: rendering the way Attic does and parsing the
//! way Nix does.

use std::fmt::Write as _;

use super::fields::{has_control, validate_ca, validate_token};
use super::hash::Sha256Hash;
use super::store_path::{validate_base_name, StorePath};
use super::Error;

/// The keys whose values are kept (and may be served again).
const KNOWN_KEYS: &[&str] = &[
    "StorePath",
    "URL",
    "Compression",
    "FileHash",
    "FileSize",
    "NarHash",
    "NarSize",
    "References",
    "Deriver",
    "Sig",
    "CA",
    "System",
];

/// Value Nix writes when the deriver is not known.
const UNKNOWN_DERIVER: &str = "unknown-deriver";

/// One narinfo document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarInfo {
    /// Full store path, e.g. `/nix/store/<hash>-<name>`.
    pub store_path: String,
    /// Where the (compressed) NAR lives, relative to the cache or absolute.
    pub url: String,
    /// Compression of the bytes behind `url` (`none`, `xz`, `zstd`, ...).
    pub compression: String,
    /// Hash of the compressed file, kept verbatim.
    pub file_hash: Option<String>,
    pub file_size: Option<u64>,
    pub nar_hash: Sha256Hash,
    pub nar_size: u64,
    /// Base names (`<hash>-<name>`), not full paths.
    pub references: Vec<String>,
    /// Base name of the `.drv`, if known.
    pub deriver: Option<String>,
    /// `keyname:base64` signatures, verbatim.
    pub sigs: Vec<String>,
    /// Content address, verbatim.
    pub ca: Option<String>,
    pub system: Option<String>,
}

impl NarInfo {
    /// Renders in Attic's field order. `NarHash` is always typed hex; every
    /// line, including the last, ends with `\n` as Nix requires.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(256 + 60 * self.references.len());
        // Writing into a String cannot fail.
        let _ = writeln!(out, "StorePath: {}", self.store_path);
        let _ = writeln!(out, "URL: {}", self.url);
        let _ = writeln!(out, "Compression: {}", self.compression);
        if let Some(h) = &self.file_hash {
            let _ = writeln!(out, "FileHash: {h}");
        }
        if let Some(s) = self.file_size {
            let _ = writeln!(out, "FileSize: {s}");
        }
        let _ = writeln!(out, "NarHash: {}", self.nar_hash.to_typed_hex());
        let _ = writeln!(out, "NarSize: {}", self.nar_size);
        let _ = writeln!(out, "References: {}", self.references.join(" "));
        if let Some(d) = &self.deriver {
            let _ = writeln!(out, "Deriver: {d}");
        }
        if let Some(s) = &self.system {
            let _ = writeln!(out, "System: {s}");
        }
        for sig in &self.sigs {
            let _ = writeln!(out, "Sig: {sig}");
        }
        if let Some(ca) = &self.ca {
            let _ = writeln!(out, "CA: {ca}");
        }
        out
    }

    /// Parses a narinfo the way Nix does: `Key: value\n` lines in any order,
    /// unknown keys ignored, later duplicates win (except `Sig`, which
    /// accumulates). Slightly stricter than Nix on malformed lines: a line
    /// without `": "` after the key is an error instead of being glued to the
    /// next line. Limiting the input size is the caller's job.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let mut fields = Fields::default();
        let mut rest = text;
        let mut line_no = 0usize;
        while !rest.is_empty() {
            line_no += 1;
            let (key, value, tail) = split_line(rest, line_no)?;
            rest = tail;
            fields.set(key, value)?;
        }
        fields.finish()
    }
}

fn bad(msg: String) -> Error {
    Error::InvalidNarInfo(msg)
}

/// The first line of `rest` as key and value, and what follows it. Nix skips exactly two
/// characters after the key: the colon and one space.
fn split_line(rest: &str, line_no: usize) -> Result<(&str, &str, &str), Error> {
    let (line, tail) = rest
        .split_once('\n')
        .ok_or_else(|| bad(format!("line {line_no} does not end with a newline")))?;
    let colon = line
        .find(':')
        .ok_or_else(|| bad(format!("line {line_no} has no ':'")))?;
    let key = &line[..colon];
    let value = line
        .get(colon + 1..)
        .and_then(|v| v.strip_prefix(' '))
        .ok_or_else(|| bad(format!("line {line_no}: expected ': ' after {key:?}")))?;
    Ok((key, value, tail))
}

/// The fields seen so far; each line is checked as it is read, the required fields once
/// all are in.
#[derive(Default)]
struct Fields {
    store_path: Option<String>,
    url: Option<String>,
    compression: Option<String>,
    file_hash: Option<String>,
    file_size: Option<u64>,
    nar_hash: Option<Sha256Hash>,
    nar_size: Option<u64>,
    references: Vec<String>,
    deriver: Option<String>,
    sigs: Vec<String>,
    ca: Option<String>,
    system: Option<String>,
}

impl Fields {
    /// One `Key: value` line: later duplicates win, `Sig` accumulates, unknown keys are
    /// ignored.
    fn set(&mut self, key: &str, value: &str) -> Result<(), Error> {
        // A value is one line; a stray '\r' (or any control character) in a field we keep
        // could end up in a served narinfo as a line break of its own.
        if KNOWN_KEYS.contains(&key) && has_control(value) {
            return Err(bad(format!("{key} contains a control character")));
        }
        match key {
            "StorePath" => {
                StorePath::parse(value)?;
                self.store_path = Some(value.to_owned());
            }
            "URL" => {
                if value.is_empty() {
                    return Err(bad("URL is empty".into()));
                }
                self.url = Some(value.to_owned());
            }
            "Compression" => self.compression = Some(value.to_owned()),
            "FileHash" => self.file_hash = Some(value.to_owned()),
            "FileSize" => self.file_size = Some(parse_u64(key, value)?),
            "NarHash" => self.nar_hash = Some(Sha256Hash::parse_any(value)?),
            "NarSize" => self.nar_size = Some(parse_u64(key, value)?),
            "References" => {
                self.references.clear();
                for r in value.split(' ').filter(|r| !r.is_empty()) {
                    validate_base_name(r)?;
                    self.references.push(r.to_owned());
                }
            }
            "Deriver" => {
                if value == UNKNOWN_DERIVER {
                    self.deriver = None;
                } else {
                    validate_base_name(value)?;
                    self.deriver = Some(value.to_owned());
                }
            }
            "Sig" => {
                validate_token("Sig", value)?;
                self.sigs.push(value.to_owned());
            }
            "CA" => {
                if !value.is_empty() {
                    validate_ca(value)?;
                }
                self.ca = (!value.is_empty()).then(|| value.to_owned());
            }
            "System" => {
                validate_token("System", value)?;
                self.system = Some(value.to_owned());
            }
            _ => {}
        }
        Ok(())
    }

    /// The document, once the required fields are known to be there.
    fn finish(self) -> Result<NarInfo, Error> {
        let store_path = self
            .store_path
            .ok_or_else(|| bad("missing StorePath".into()))?;
        let url = self.url.ok_or_else(|| bad("missing URL".into()))?;
        let nar_hash = self.nar_hash.ok_or_else(|| bad("missing NarHash".into()))?;
        let nar_size = self.nar_size.ok_or_else(|| bad("missing NarSize".into()))?;
        if nar_size == 0 {
            return Err(bad("NarSize must be non-zero".into()));
        }
        // Nix treats a missing or empty Compression as the historical default.
        let compression = self
            .compression
            .filter(|c: &String| !c.is_empty())
            .unwrap_or_else(|| "bzip2".to_owned());

        Ok(NarInfo {
            store_path,
            url,
            compression,
            file_hash: self.file_hash,
            file_size: self.file_size,
            nar_hash,
            nar_size,
            references: self.references,
            deriver: self.deriver,
            sigs: self.sigs,
            ca: self.ca,
            system: self.system,
        })
    }
}

/// Plain decimal only: no sign, no whitespace, no empty string.
fn parse_u64(key: &str, value: &str) -> Result<u64, Error> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::InvalidNarInfo(format!(
            "{key} is not a decimal number: {value:?}"
        )));
    }
    value
        .parse()
        .map_err(|_| Error::InvalidNarInfo(format!("{key} is out of range: {value:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by `nix copy` (spec §3.1).
    const NIX_COPY: &str = "StorePath: /nix/store/n5z75rf7snr3rz5wy57zn6pf44mrsf8h-d
URL: nar/183iq7h4kid3gv7sin64kqvm049f32dgfp5nab1ywijch1kk7b39.nar.zst
Compression: zstd
FileHash: sha256:183iq7h4kid3gv7sin64kqvm049f32dgfp5nab1ywijch1kk7b39
FileSize: 238
NarHash: sha256:0059v5kg2s39n3s7fchn4vpdqgzwdmpgx5nwyjsn1q67g9a81i1f
NarSize: 1072
References: 
Sig: test-1:PjiLAR6Rn1d+okwFRuc8V1QBMJmaztbIl7tF9Jco/NLm/kqmRsbjfMkyibtYaGLS0PbI1W/4qPQlT9D88FuGDQ==
CA: fixed:r:sha256:0059v5kg2s39n3s7fchn4vpdqgzwdmpgx5nwyjsn1q67g9a81i1f
";

    const HELLO: &str = "/nix/store/xcp9cav49dmsjbwdjlmkjxj10gkpx553-hello-2.10";
    const HELLO_BASE: &str = "xcp9cav49dmsjbwdjlmkjxj10gkpx553-hello-2.10";
    const GLIBC_BASE: &str = "563528481rvhc5kxwipjmg6rqrl95mdx-glibc-2.33-56";
    const HEX: &str = "91e129ac1959d062ad093d2b1f8b65afae0f712056fe3eac78ec530ff6a1bb9a";
    const NIX32: &str = "16mvl7v0ylzcg2n3xzjn41qhzbmgcn5iyarx16nn5l2r36n2kqci";

    fn attic_example() -> NarInfo {
        NarInfo {
            store_path: HELLO.into(),
            url: "nar/xcp9cav49dmsjbwdjlmkjxj10gkpx553.nar".into(),
            compression: "zstd".into(),
            file_hash: None,
            file_size: None,
            nar_hash: Sha256Hash::parse_attic(&format!("sha256:{HEX}")).unwrap(),
            nar_size: 206104,
            references: vec![GLIBC_BASE.into(), HELLO_BASE.into()],
            deriver: Some("bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-hello-2.10.drv".into()),
            sigs: vec!["cache-1:AAAA".into()],
            ca: None,
            system: None,
        }
    }

    #[test]
    fn parse_nix_copy_output() {
        let n = NarInfo::parse(NIX_COPY).unwrap();
        assert_eq!(
            n.store_path,
            "/nix/store/n5z75rf7snr3rz5wy57zn6pf44mrsf8h-d"
        );
        assert_eq!(
            n.url,
            "nar/183iq7h4kid3gv7sin64kqvm049f32dgfp5nab1ywijch1kk7b39.nar.zst"
        );
        assert_eq!(n.compression, "zstd");
        assert_eq!(
            n.file_hash.as_deref(),
            Some("sha256:183iq7h4kid3gv7sin64kqvm049f32dgfp5nab1ywijch1kk7b39")
        );
        assert_eq!(n.file_size, Some(238));
        assert_eq!(
            n.nar_hash.to_typed_nix32(),
            "sha256:0059v5kg2s39n3s7fchn4vpdqgzwdmpgx5nwyjsn1q67g9a81i1f"
        );
        assert_eq!(n.nar_size, 1072);
        assert!(n.references.is_empty());
        assert_eq!(n.deriver, None);
        assert_eq!(n.sigs.len(), 1);
        assert!(n.sigs[0].starts_with("test-1:PjiLAR6R"));
        assert_eq!(
            n.ca.as_deref(),
            Some("fixed:r:sha256:0059v5kg2s39n3s7fchn4vpdqgzwdmpgx5nwyjsn1q67g9a81i1f")
        );
        assert_eq!(n.system, None);
    }

    #[test]
    fn render_attic_order() {
        let expected = format!(
            "StorePath: {HELLO}\n\
             URL: nar/xcp9cav49dmsjbwdjlmkjxj10gkpx553.nar\n\
             Compression: zstd\n\
             NarHash: sha256:{HEX}\n\
             NarSize: 206104\n\
             References: {GLIBC_BASE} {HELLO_BASE}\n\
             Deriver: bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-hello-2.10.drv\n\
             Sig: cache-1:AAAA\n"
        );
        assert_eq!(attic_example().render(), expected);
    }

    #[test]
    fn render_all_fields_and_empty_references() {
        let mut n = attic_example();
        n.references.clear();
        n.file_hash = Some("sha256:abc".into());
        n.file_size = Some(5);
        n.sigs.push("other-1:BBBB".into());
        n.ca = Some("text:sha256:xyz".into());
        n.deriver = None;
        let text = n.render();
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        assert_eq!(
            lines,
            [
                &format!("StorePath: {HELLO}\n") as &str,
                "URL: nar/xcp9cav49dmsjbwdjlmkjxj10gkpx553.nar\n",
                "Compression: zstd\n",
                "FileHash: sha256:abc\n",
                "FileSize: 5\n",
                &format!("NarHash: sha256:{HEX}\n"),
                "NarSize: 206104\n",
                "References: \n",
                "Sig: cache-1:AAAA\n",
                "Sig: other-1:BBBB\n",
                "CA: text:sha256:xyz\n",
            ]
        );
    }

    #[test]
    fn round_trip() {
        let n = attic_example();
        assert_eq!(NarInfo::parse(&n.render()).unwrap(), n);
        let mut m = n.clone();
        m.system = Some("x86_64-linux".into());
        m.ca = Some(format!("fixed:r:sha256:{NIX32}"));
        m.file_size = Some(1);
        assert_eq!(NarInfo::parse(&m.render()).unwrap(), m);
    }

    #[test]
    fn accepts_any_hash_encoding_and_free_order() {
        let text = format!(
            "NarSize: 1\nSystem: x86_64-linux\nNarHash: sha256:{NIX32}\nURL: a\nStorePath: {HELLO}\nX-Unknown: whatever: with colon\n"
        );
        let n = NarInfo::parse(&text).unwrap();
        assert_eq!(n.nar_hash.to_hex(), HEX);
        assert_eq!(n.compression, "bzip2");
        assert_eq!(n.system.as_deref(), Some("x86_64-linux"));
        assert!(n.references.is_empty());

        let b64 = "keEprBlZ0GKtCT0rH4tlr64PcSBW/j6seOxTD/ahu5o=";
        for h in [format!("sha256:{b64}"), format!("sha256-{b64}")] {
            let text = format!("StorePath: {HELLO}\nURL: a\nNarHash: {h}\nNarSize: 1\n");
            assert_eq!(NarInfo::parse(&text).unwrap().nar_hash.to_hex(), HEX);
        }
    }

    #[test]
    fn unknown_deriver_and_multiple_sigs() {
        let text = format!(
            "StorePath: {HELLO}\nURL: a\nNarHash: sha256:{HEX}\nNarSize: 9\nDeriver: unknown-deriver\nSig: a:1\nSig: b:2\nReferences: {HELLO_BASE}  {GLIBC_BASE}\n"
        );
        let n = NarInfo::parse(&text).unwrap();
        assert_eq!(n.deriver, None);
        assert_eq!(n.sigs, ["a:1", "b:2"]);
        assert_eq!(n.references, [HELLO_BASE, GLIBC_BASE]);
    }

    #[test]
    fn rejects_malformed() {
        let good = format!("StorePath: {HELLO}\nURL: a\nNarHash: sha256:{HEX}\nNarSize: 9\n");
        NarInfo::parse(&good).unwrap();
        let cases = [
            // last line without newline
            good.trim_end().to_string(),
            // missing required fields
            format!("URL: a\nNarHash: sha256:{HEX}\nNarSize: 9\n"),
            format!("StorePath: {HELLO}\nNarHash: sha256:{HEX}\nNarSize: 9\n"),
            format!("StorePath: {HELLO}\nURL: a\nNarSize: 9\n"),
            format!("StorePath: {HELLO}\nURL: a\nNarHash: sha256:{HEX}\n"),
            // zero / malformed sizes
            good.replace("NarSize: 9", "NarSize: 0"),
            good.replace("NarSize: 9", "NarSize: +9"),
            good.replace("NarSize: 9", "NarSize: 9 "),
            good.replace("NarSize: 9", "NarSize: 99999999999999999999999"),
            format!("{good}FileSize: -1\n"),
            // bad hashes and paths
            good.replace("sha256:", "sha512:"),
            good.replace("sha256:91", "sha256:9"),
            good.replace("/nix/store/", "nix/store/"),
            good.replace("/nix/store/", "/nix/store/../"),
            format!("{good}References: /nix/store/{HELLO_BASE}\n"),
            format!("{good}References: {HELLO_BASE} bogus\n"),
            format!("{good}Deriver: bogus\n"),
            format!("{good}Deriver: \n"),
            good.replace("URL: a", "URL: "),
            // separator problems
            good.replace("URL: a", "URL:a"),
            good.replace("URL: a", "URL"),
            format!("{good}References:\n"),
            format!("{good}\n"),
            // content addresses and signatures outside Nix's grammar, control characters
            format!("{good}CA: fixed:r:sha256:abc\n"),
            format!("{good}CA: fixed:r:sha256:{NIX32}\r\n"),
            format!("{good}CA: fixed:r:sha256:{NIX32} URL: x\n"),
            format!("{good}Sig: a:1 b:2\n"),
            format!("{good}Sig: \n"),
            format!("{good}System: x86_64-linux\r\n"),
            good.replace("URL: a", "URL: a\r"),
            good.replace("NarSize: 9", "Compression: xz\rNarSize: 9"),
        ];
        for (i, text) in cases.iter().enumerate() {
            assert!(NarInfo::parse(text).is_err(), "case {i} accepted: {text:?}");
        }
    }

    #[test]
    fn later_duplicates_win() {
        let text = format!(
            "StorePath: {HELLO}\nURL: a\nURL: b\nNarHash: sha256:{HEX}\nNarSize: 9\nNarSize: 10\nCompression: xz\nCompression: \n"
        );
        let n = NarInfo::parse(&text).unwrap();
        assert_eq!(n.url, "b");
        assert_eq!(n.nar_size, 10);
        assert_eq!(n.compression, "bzip2");
    }
}
