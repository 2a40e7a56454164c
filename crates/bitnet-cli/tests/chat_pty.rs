//! `bitnet chat` in a real pseudo-terminal: the line editor (history, arrow keys, multi-line
//! input), slash commands, the cache reused across turns, Ctrl-C, and a conversation longer
//! than the demo model's 1024-token context that goes on by dropping its oldest turns.

use rexpect::session::{spawn_command, PtySession};
use std::process::Command;

fn chat(args: &[&str]) -> PtySession {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bitnet"));
    cmd.arg("chat").args(args);
    // A terminal the line editor knows (a "dumb" one would make it fall back to plain reads).
    cmd.env("TERM", "xterm").env_remove("RUST_BACKTRACE");
    let mut p = spawn_command(cmd, Some(60_000)).unwrap();
    p.exp_string("chatting with").unwrap();
    p.exp_string("> ").unwrap();
    p
}

/// Waits for the stats footer; returns (what came before it, generated, prompt, cached,
/// context used).
fn footer(p: &mut PtySession) -> (String, usize, usize, usize, usize) {
    let (before, line) = p
        .exp_regex(r"\[\d+ tokens, [^\]]* \| prompt \d+ tokens \(\d+ cached\)[^\]]*context \d+/\d+[^\]]*\]")
        .unwrap();
    let numbers: Vec<usize> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect();
    // [G tokens, R.R t/s | prompt P tokens (C cached), R.R t/s | context U/N | stop: …]
    let generated = numbers[0];
    let prompt_at = line.find("prompt ").unwrap();
    let after: Vec<usize> = line[prompt_at..]
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect();
    let context_at = line.find("context ").unwrap();
    let used: usize = line[context_at + 8..]
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    (before, generated, after[0], after[1], used)
}

#[test]
fn line_editor_commands_and_cache_reuse() {
    let mut p = chat(&["--temp", "0", "-n", "24"]);

    // Turn 1, then turn 2: the second prefills only its own message and the end of the first
    // reply's turn (one token); everything before is reused from the cache.
    p.send_line("Good morrow, Romeo.").unwrap();
    let (_, generated, _, _, used1) = footer(&mut p);
    assert_eq!(generated, 24);
    p.exp_string("> ").unwrap();
    p.send_line("What say you?").unwrap();
    let (_, _, prompt, cached, used2) = footer(&mut p);
    // The footer counts what the cache holds (the last sampled token is not in it yet).
    assert_eq!(
        cached, used1,
        "everything cached by the first turn is reused"
    );
    assert!(prompt < 20, "prompt {prompt}");
    assert_eq!(used2, cached + prompt + 24);
    p.exp_string("> ").unwrap();

    // History: the up arrow brings back the last message (not `^[[A` sent to the model).
    p.send("\x1b[A").unwrap();
    p.flush().unwrap();
    p.exp_string("What say you?").unwrap();
    p.send("\r").unwrap();
    p.flush().unwrap();
    footer(&mut p);
    p.exp_string("> ").unwrap();

    // Editing with the left arrow: "/systm", left, "e" gives "/system".
    p.send("/systm\x1b[De\r").unwrap();
    p.flush().unwrap();
    p.exp_string("(no system prompt; /system TEXT sets one)")
        .unwrap();
    p.exp_string("> ").unwrap();

    // Unknown commands are answered with the help, not sent to the model.
    p.send_line("/bogus").unwrap();
    p.exp_string("(unknown command /bogus)").unwrap();
    p.exp_string("/reset: new conversation").unwrap();
    p.exp_string("> ").unwrap();

    // `/system TEXT` sets, `/system` shows.
    p.send_line("/system Speak as a poet.").unwrap();
    p.exp_string("(system prompt set; conversation reset)")
        .unwrap();
    p.exp_string("> ").unwrap();
    p.send_line("/system").unwrap();
    p.exp_string("(system prompt: Speak as a poet.)").unwrap();
    p.exp_string("> ").unwrap();

    // Multi-line input: a trailing backslash continues the message on the next line.
    p.send_line("First line \\").unwrap();
    p.exp_string(". ").unwrap();
    p.send_line("and the second.").unwrap();
    let (_, generated, prompt, cached, _) = footer(&mut p);
    assert!(generated > 0);
    assert_eq!(cached, 0, "a new conversation after /system");
    assert!(
        prompt > 10,
        "both lines and the system prompt are in the prompt: {prompt}"
    );
    p.exp_string("> ").unwrap();

    p.send_line("/reset").unwrap();
    p.exp_string("(conversation reset)").unwrap();
    p.send_line("/exit").unwrap();
    p.exp_eof().unwrap();
}

#[test]
fn ctrl_c_interrupts_a_reply_and_the_chat_goes_on() {
    let mut p = chat(&["-n", "-1", "-c", "1024", "--no-stats"]);
    p.send_line("Tell me a long tale.").unwrap();
    // Let some text arrive, then interrupt.
    std::thread::sleep(std::time::Duration::from_millis(300));
    p.send_control('c').unwrap();
    p.exp_string("(interrupted)").unwrap();
    p.exp_string("> ").unwrap();
    p.send_line("/reset").unwrap();
    p.exp_string("(conversation reset)").unwrap();
    p.send_line("/exit").unwrap();
    p.exp_eof().unwrap();
}

/// More turns than the demo model's 1024-token context holds: the oldest turns are dropped
/// (the note says so), the context never overflows, and the replies after the drop are still
/// text (words, not a repeated token or garbage).
#[test]
fn a_chat_longer_than_the_context_goes_on() {
    let mut p = chat(&["--temp", "0", "-n", "40", "--system", "You are Romeo."]);
    let lines = [
        "Good morrow, Romeo.",
        "What light is this?",
        "Where is Juliet?",
        "Speak of the moon.",
        "Who goes there?",
        "Tell me of Verona.",
        "What of the Capulets?",
        "Is the night long?",
    ];
    let mut total = 0;
    let mut dropped_at = None;
    for turn in 0..32 {
        p.send_line(lines[turn % lines.len()]).unwrap();
        let (before, generated, prompt, _, used) = footer(&mut p);
        assert!(used <= 1024, "turn {turn}: context {used}");
        total += prompt + generated;
        if before.contains("(context full: dropped the oldest turns") {
            dropped_at.get_or_insert(turn);
        }
        if dropped_at.is_some() {
            let reply = before
                .rsplit(lines[turn % lines.len()])
                .next()
                .unwrap_or("");
            let letters = reply.chars().filter(|c| c.is_alphabetic()).count();
            let words: Vec<&str> = reply.split_whitespace().collect();
            let distinct: std::collections::HashSet<&&str> = words.iter().collect();
            assert!(
                generated > 0 && letters > 20 && distinct.len() >= 5,
                "turn {turn}: {reply:?}"
            );
        }
        p.exp_string("> ").unwrap();
    }
    assert!(total > 1500, "{total} tokens went through the context");
    let at = dropped_at.expect("the context never filled up");
    assert!(at < 28, "dropped first at turn {at}");
    p.send_line("/system").unwrap();
    p.exp_string("(system prompt: You are Romeo.)").unwrap();
    p.send_line("/exit").unwrap();
    p.exp_eof().unwrap();
}

/// A reply that fills a small context: the footer's count is what the cache holds, never more
/// than the context (it showed 130/128).
#[test]
fn the_footer_never_counts_past_the_context() {
    let mut p = chat(&["--temp", "0", "-c", "128", "--no-ctx-shift"]);
    // A long message, so that the reply reaches the end of the context before its turn ends.
    p.send_line(
        "Good morrow, Romeo. Speak to me of the moon, of the night, of Verona and of the \
         Capulets and the Montagues, and of the feud that parts our houses, and of love.",
    )
    .unwrap();
    let (_, generated, prompt, _, used) = footer(&mut p);
    assert!(
        prompt + generated >= 128,
        "the reply did not fill the context"
    );
    assert!(used <= 128, "context {used}/128");
    p.exp_string("> ").unwrap();
    p.send_line("/exit").unwrap();
    p.exp_eof().unwrap();
}
