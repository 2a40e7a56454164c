//! `bitnet quantize`: GGUF to GGUF. The pre-encoded Q6_K output gives the logits that
//! `--output-type q6_k` at load gives; ternary re-encodings (I2_S → TQ2_0 → I2_S, TQ1_0) keep
//! the greedy text; all metadata is kept.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn ok(args: &[&str]) -> String {
    ok_env(args, &[])
}

fn ok_env(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_bitnet"))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .env_remove("BITNET_TQ_REPACK")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?}: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

fn demo_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/bitnet-shakespeare-7m-i2_s.gguf")
}

fn json(args: &[&str]) -> Value {
    serde_json::from_str(&ok(args)).unwrap()
}

fn greedy(model: &Path) -> Value {
    json(&[
        "generate",
        "-m",
        model.to_str().unwrap(),
        "-p",
        "ROMEO:\\n",
        "-n",
        "40",
        "--temp",
        "0",
        "--json",
    ])["generated_ids"]
        .clone()
}

/// The largest difference between two `[[logit, …], …]` arrays.
fn max_diff(a: &Value, b: &Value) -> f64 {
    let flat = |v: &Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()))
            .collect()
    };
    let (a, b) = (flat(a), flat(b));
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn json_env(args: &[&str], env: &[(&str, &str)]) -> Value {
    serde_json::from_str(&ok_env(args, env)).unwrap()
}

/// IEEE half-precision bits to f32 (normal numbers, enough for a weight scale).
fn half_to_f32(h: u16) -> f32 {
    let exp = ((h >> 10) & 0x1f) as i32;
    let mant = (h & 0x3ff) as f32 / 1024.0;
    let sign = if h >> 15 == 1 { -1.0 } else { 1.0 };
    assert!(exp > 0 && exp < 31, "not a normal half: {h:#x}");
    sign * (1.0 + mant) * 2f32.powi(exp - 15)
}

/// The half bits of `x`, a number a half holds exactly (normal).
fn f32_to_half(x: f32) -> u16 {
    let bits = x.to_bits();
    let exp = ((bits >> 23) & 0xff) as i32 - 127 + 15;
    assert!(exp > 0 && exp < 31);
    ((bits >> 31) as u16) << 15 | (exp as u16) << 10 | ((bits >> 13) & 0x3ff) as u16
}

fn inspect(model: &Path) -> Value {
    json(&["inspect", model.to_str().unwrap(), "--json"])
}

#[test]
fn quantized_files_load_and_match_what_load_time_encoding_gives() {
    let dir = std::env::temp_dir().join(format!("bitnet-quantize-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let demo = demo_path();
    let d_in = demo.to_str().unwrap();
    let path = |name: &str| dir.join(name);
    let tokens = "4093,2093,25,59,77,1000,7,300";

    // Q6_K output, written once: the same logits as re-encoding at load.
    let q6 = path("q6k.gguf");
    ok(&[
        "quantize",
        d_in,
        q6.to_str().unwrap(),
        "--output-type",
        "q6_k",
    ]);
    let at_load = json(&[
        "logits",
        "--tokens",
        tokens,
        "--all",
        "--json",
        "--output-type",
        "q6_k",
    ]);
    let pre = json(&[
        "logits",
        "-m",
        q6.to_str().unwrap(),
        "--tokens",
        tokens,
        "--all",
        "--json",
    ]);
    assert!(
        pre["logits"] == at_load["logits"],
        "pre-encoded Q6_K differs from load-time Q6_K"
    );
    let plain = json(&["logits", "--tokens", tokens, "--all", "--json"]);
    assert!(
        max_diff(&pre["logits"], &plain["logits"]) > 0.0,
        "the output really is Q6_K"
    );
    let info = inspect(&q6);
    let output = info["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "output.weight")
        .expect("output.weight added to the tied model");
    assert_eq!(output["type"], "Q6_K");
    // Every metadata key is kept.
    assert!(
        info["metadata"] == inspect(&demo)["metadata"],
        "metadata changed"
    );

    // Ternary re-encodings keep every value; TQ2_0 and TQ1_0 store each block's scale as f16,
    // so I2_S's f32 scale is rounded once (the logits move a little), and from there on the
    // conversions are exact: TQ2_0 → I2_S → TQ2_0 gives the same bytes and the same logits.
    let logits = |m: &Path| {
        json(&[
            "logits",
            "-m",
            m.to_str().unwrap(),
            "--tokens",
            tokens,
            "--all",
            "--json",
        ])["logits"]
            .clone()
    };
    let tq2 = path("tq2.gguf");
    ok(&["quantize", d_in, tq2.to_str().unwrap(), "--type", "tq2_0"]);
    let info = inspect(&tq2);
    assert_eq!(info["file_type"], 37);
    let types: Vec<&str> = info["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["name"].as_str().unwrap().contains("attn_q"))
        .map(|t| t["type"].as_str().unwrap())
        .collect();
    assert!(
        !types.is_empty() && types.iter().all(|&t| t == "TQ2_0"),
        "{types:?}"
    );
    let back = path("back.gguf");
    ok(&[
        "quantize",
        tq2.to_str().unwrap(),
        back.to_str().unwrap(),
        "--type",
        "i2_s",
    ]);
    assert_eq!(inspect(&back)["file_type"], 40);
    let again = path("again.gguf");
    ok(&[
        "quantize",
        back.to_str().unwrap(),
        again.to_str().unwrap(),
        "--type",
        "tq2_0",
    ]);
    assert_eq!(std::fs::read(&again).unwrap(), std::fs::read(&tq2).unwrap());
    let (reference, rounded) = (logits(&demo), logits(&tq2));
    let tq1 = path("tq1.gguf");
    ok(&["quantize", d_in, tq1.to_str().unwrap(), "--type", "tq1_0"]);
    // Every tensor's blocks share one scale, so TQ2_0 and TQ1_0 are repacked to I2_S at load:
    // the same integers times the same (f16-rounded) scale as the I2_S file `back`, through
    // the same kernels, so the same logits to the bit.
    let back_logits = logits(&back);
    assert!(rounded == back_logits, "TQ2_0 repacked differs from I2_S");
    assert!(
        logits(&tq1) == back_logits,
        "TQ1_0 repacked differs from I2_S"
    );
    let layouts = |m: &Path, env: &[(&str, &str)]| {
        let out = ok_env(
            &[
                "bench",
                "-m",
                m.to_str().unwrap(),
                "-p",
                "4",
                "-n",
                "0",
                "-r",
                "1",
                "-t",
                "1",
                "--no-bandwidth",
                "--json",
            ],
            env,
        );
        serde_json::from_str::<Value>(&out).unwrap()["weight_layouts"].clone()
    };
    let n_linear = inspect(&tq2)["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["type"] == "TQ2_0")
        .count();
    assert_eq!(
        layouts(&tq1, &[]),
        serde_json::json!([{"file": "TQ1_0", "layout": "I2_S", "tensors": n_linear}])
    );
    // The per-block kernels (the layout kept with BITNET_TQ_REPACK=0) give the same weights'
    // products up to the order of float sums.
    let no_repack = [("BITNET_TQ_REPACK", "0")];
    for (m, ty) in [(&tq2, "TQ2_0"), (&tq1, "TQ1_0")] {
        let per_block = json_env(
            &[
                "logits",
                "-m",
                m.to_str().unwrap(),
                "--tokens",
                tokens,
                "--all",
                "--json",
            ],
            &no_repack,
        )["logits"]
            .clone();
        let d = max_diff(&per_block, &back_logits);
        assert!(d < 1e-3, "per-block {m:?} and I2_S differ by {d}");
        assert_eq!(
            layouts(m, &no_repack),
            serde_json::json!([{"file": ty, "layout": ty, "tensors": n_linear}])
        );
    }
    // A tensor whose blocks have different scales keeps the per-block layout (one block of
    // blk.0.attn_q.weight given twice the scale); the others are still repacked.
    let info = inspect(&tq2);
    let q = info["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "blk.0.attn_q.weight")
        .unwrap();
    let offset = q["offset"].as_u64().unwrap() as usize;
    let mut bytes = std::fs::read(&tq2).unwrap();
    let d = offset + 66 + 64; // the second block's f16 scale
    let scale = half_to_f32(u16::from_le_bytes([bytes[d], bytes[d + 1]]));
    bytes[d..d + 2].copy_from_slice(&f32_to_half(2.0 * scale).to_le_bytes());
    let mixed = path("mixed.gguf");
    std::fs::write(&mixed, &bytes).unwrap();
    assert_eq!(
        layouts(&mixed, &[]),
        serde_json::json!([
            {"file": "TQ2_0", "layout": "TQ2_0", "tensors": 1},
            {"file": "TQ2_0", "layout": "I2_S", "tensors": n_linear - 1},
        ])
    );
    let d = max_diff(&logits(&mixed), &rounded);
    assert!(
        d > 0.0 && d < 1.0,
        "the doubled block moves the logits a little: {d}"
    );
    // The f16 scales move the logits by far less than their spread.
    let d = max_diff(&reference, &rounded);
    assert!(d > 0.0 && d < 0.5, "{d}");
    // The greedy text of a re-encoded file is what the same file gives with the other type.
    assert_eq!(greedy(&tq2), greedy(&back));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A TQ1_0 file (repacked to I2_S at load) decoding from the 1.6-bit layout: the greedy text
/// of the I2_S layout, and `bench` names the layout each generation run read, with 20 % fewer
/// ternary bytes per token for T1_6 on the demo model's shapes.
#[test]
fn tq1_0_decodes_from_the_1_6_bit_layout_with_the_same_text() {
    let dir = std::env::temp_dir().join(format!("bitnet-t16-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tq1 = dir.join("tq1.gguf");
    let demo = demo_path();
    ok(&[
        "quantize",
        demo.to_str().unwrap(),
        tq1.to_str().unwrap(),
        "--type",
        "tq1_0",
    ]);
    let greedy_with = |layout: &str| {
        json_env(
            &[
                "generate",
                "-m",
                tq1.to_str().unwrap(),
                "-p",
                "ROMEO:\\n",
                "-n",
                "40",
                "--temp",
                "0",
                "--json",
            ],
            &[("BITNET_DECODE_LAYOUT", layout)],
        )["generated_ids"]
            .clone()
    };
    let i2s = greedy_with("i2_s");
    assert_eq!(i2s.as_array().unwrap().len(), 40);
    assert_eq!(greedy_with("t1_6"), i2s);
    let bench = json(&[
        "bench",
        "-m",
        tq1.to_str().unwrap(),
        "-p",
        "0",
        "-n",
        "2",
        "-r",
        "1",
        "-t",
        "1",
        "--no-bandwidth",
        "--decode-layout",
        "i2_s,t1_6",
        "--json",
    ]);
    let runs: Vec<(String, String, f64)> = bench["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["test"].as_str().unwrap().to_string(),
                r["decode_layout"].as_str().unwrap().to_string(),
                r["decode_bytes_per_token"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(
        (runs[0].0.as_str(), runs[0].1.as_str()),
        ("tg2 i2_s", "i2_s")
    );
    assert_eq!(
        (runs[1].0.as_str(), runs[1].1.as_str()),
        ("tg2 t1_6", "t1_6")
    );
    assert!(runs[1].2 < runs[0].2, "{runs:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
