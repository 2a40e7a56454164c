//! The high-level API's errors as a caller meets them: which layer's variant a failure is,
//! the `source()` chain down to the operating system's error, the option a message names,
//! and `Chat::send` reporting the same `bitnet::Error` as the rest of `Model`.

use std::ops::ControlFlow;
use std::path::PathBuf;

use bitnet::formats::gguf::{GgufError, GgufErrorKind};
use bitnet::generate::{Chat, GenerateError};
use bitnet::hf::HfError;
use bitnet::{Error, GenerateParams, Generation, Model, ModelOptions};

/// A fresh directory for this test's files.
fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bitnet-errors-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Every error of the chain, the outermost first.
fn chain(e: &Error) -> Vec<&(dyn std::error::Error + 'static)> {
    let mut out = Vec::new();
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(e) = next {
        out.push(e);
        next = e.source();
    }
    out
}

#[test]
fn a_missing_gguf_is_a_gguf_error_whose_chain_reaches_the_io_error() {
    let missing = temp_dir("missing").join("no-such-model.gguf");
    let e = Model::load(missing.as_path()).unwrap_err();
    assert!(matches!(e, Error::Gguf(_)), "{e:?}");

    // Error -> GgufError -> GgufErrorKind::Io -> io::Error, each reachable by `source()`.
    let chain = chain(&e);
    let gguf = chain[1].downcast_ref::<GgufError>().expect("the GgufError");
    assert_eq!(gguf.file, missing.display().to_string());
    assert!(matches!(
        chain[2].downcast_ref::<GgufErrorKind>(),
        Some(GgufErrorKind::Io(_))
    ));
    let io = chain[3]
        .downcast_ref::<std::io::Error>()
        .expect("the io::Error");
    assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
    assert_eq!(chain.len(), 4);

    // The top message says it all once: each cause's text is already part of it.
    let top = e.to_string();
    assert!(top.starts_with(&format!("{}: cannot read the file: ", missing.display())));
    for cause in &chain[1..] {
        assert!(top.contains(&cause.to_string()), "{top} / {cause}");
    }
}

#[test]
fn a_bad_local_gguf_is_a_gguf_error() {
    let dir = temp_dir("bad-gguf");
    let bad_magic = dir.join("bad-magic.gguf");
    std::fs::write(&bad_magic, b"XXXXjunkjunkjunk").unwrap();
    let e = Model::load(bad_magic.as_path()).unwrap_err();
    match &e {
        Error::Gguf(g) => assert!(matches!(g.kind, GgufErrorKind::BadMagic { .. }), "{e:?}"),
        other => panic!("expected Error::Gguf, got {other:?}"),
    }

    // The demo model cut short: its header announces more than the file holds.
    let demo = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../models/bitnet-shakespeare-7m-i2_s.gguf"
    ))
    .unwrap();
    let truncated = dir.join("truncated.gguf");
    std::fs::write(&truncated, &demo[..1000]).unwrap();
    let e = Model::load(truncated.as_path()).unwrap_err();
    assert!(matches!(e, Error::Gguf(_)), "{e:?}");
    assert!(
        e.to_string().starts_with(&truncated.display().to_string()),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_folder_failing_in_its_own_files_is_an_hf_error_chained_to_its_cause() {
    let dir = temp_dir("hf-folder");
    std::fs::write(dir.join("config.json"), "{ not json").unwrap();
    let e = Model::load(dir.as_path()).unwrap_err();
    assert!(matches!(e, Error::Hf(HfError::Json { .. })), "{e:?}");
    let chain = chain(&e);
    assert!(chain.iter().any(|c| c.is::<serde_json::Error>()), "{e:?}");

    let empty = temp_dir("hf-empty");
    let e = Model::load(empty.as_path()).unwrap_err();
    assert!(matches!(e, Error::Hf(HfError::NoConfig { .. })), "{e:?}");
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&empty).unwrap();
}

#[test]
fn a_context_no_machine_can_hold_is_refused_at_load_naming_the_option() {
    for context in [1_000_000_000_000, usize::MAX / 2] {
        let options = ModelOptions {
            context,
            ..ModelOptions::default()
        };
        let e = Model::load_with(None::<&str>, &options).unwrap_err();
        match &e {
            Error::InvalidOption { option, .. } => assert_eq!(*option, "context"),
            other => panic!("expected InvalidOption, got {other:?}"),
        }
        let message = e.to_string();
        assert!(
            message.starts_with(&format!("context {context} is too large")),
            "{message}"
        );
        assert!(!message.contains("-c"), "a command-line flag in {message}");
    }
    // A context beyond the trained one but within memory loads.
    let options = ModelOptions {
        context: 4096,
        ..ModelOptions::default()
    };
    assert_eq!(
        Model::load_with(None::<&str>, &options)
            .unwrap()
            .context_size(),
        4096
    );
}

#[test]
fn a_prompt_longer_than_the_context_names_no_command_line_flag() {
    let options = ModelOptions {
        context: 16,
        ..ModelOptions::default()
    };
    let model = Model::load_with(None::<&str>, &options).unwrap();
    let e = model
        .generate(&"ROMEO: ".repeat(20), &GenerateParams::greedy())
        .unwrap_err();
    assert!(
        matches!(e, Error::Generate(GenerateError::PromptTooLong { .. })),
        "{e:?}"
    );
    assert!(!e.to_string().contains("-c"), "{e}");
}

/// `Chat::send`'s error type is the crate's `Error` (this does not compile otherwise).
fn send(chat: &mut Chat<'_>, text: &str) -> Result<Generation, Error> {
    chat.send(text, |_| ControlFlow::Continue(()))
}

#[test]
fn chat_send_reports_bitnet_error() {
    let options = ModelOptions {
        context: 32,
        ..ModelOptions::default()
    };
    let model = Model::load_with(None::<&str>, &options).unwrap();
    let mut chat = model
        .chat_session(None, &GenerateParams::greedy().max_tokens(4))
        .unwrap();
    assert!(send(&mut chat, "Good morrow!").is_ok());
    // A message that cannot fit even with every older turn dropped.
    let e = send(&mut chat, &"Good morrow! ".repeat(40)).unwrap_err();
    assert!(
        matches!(e, Error::Generate(GenerateError::PromptTooLong { .. })),
        "{e:?}"
    );
}

#[test]
fn an_output_type_the_model_cannot_take_names_the_option_not_a_flag() {
    use bitnet::formats::gguf::GgufFile;
    use bitnet::formats::types::TensorType;
    use bitnet::model::synth::{write_random_model, Shape};

    // The demo's vocabulary on rows of 128 values: not whole Q6_K blocks (256).
    let demo = Model::demo().unwrap();
    let shape = Shape {
        name: "narrow",
        n_vocab: demo.config().n_vocab,
        n_embd: 128,
        n_ff: 384,
        n_head: 2,
        n_head_kv: 1,
        ..Shape::by_name("tiny").unwrap()
    };
    let vocab = GgufFile::from_static(
        "demo",
        include_bytes!("../../../models/bitnet-shakespeare-7m-i2_s.gguf"),
    )
    .unwrap();
    let path = temp_dir("output-type").join("narrow.gguf");
    let file = std::fs::File::create(&path).unwrap();
    write_random_model(file, &shape, Some(&vocab), 1, |_, _| {}).unwrap();
    let options = ModelOptions {
        output_type: Some(TensorType::Q6K),
        ..ModelOptions::default()
    };
    let e = Model::load_with(path.as_path(), &options).unwrap_err();
    match &e {
        Error::InvalidOption { option, .. } => assert_eq!(*option, "output_type"),
        other => panic!("expected InvalidOption, got {other:?}"),
    }
    assert!(e.to_string().starts_with("output_type Q6_K: "), "{e}");
    assert!(!e.to_string().contains("--"), "{e}");
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}
