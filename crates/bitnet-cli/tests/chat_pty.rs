//! `bitnet chat` in a real pseudo-terminal: two turns, an interrupt with Ctrl-C, /reset, /exit.

use rexpect::session::spawn_command;
use std::process::Command;

#[test]
fn chat_two_turns_interrupt_reset_exit() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bitnet"));
    cmd.args(["chat", "--temp", "0", "-n", "24", "--verbose"]);
    let mut p = spawn_command(cmd, Some(30_000)).unwrap();
    p.exp_string("chatting with").unwrap();
    p.exp_string("> ").unwrap();

    // Turn 1 and turn 2: replies stream back and the prompt returns; the second turn reuses
    // the cache (its summary reports cached tokens).
    p.send_line("Good morrow, Romeo.").unwrap();
    p.exp_string("stop: length").unwrap();
    p.exp_string("> ").unwrap();
    p.send_line("What say you?").unwrap();
    let (_, summary) = p.exp_regex(r"\(\d+ cached\)").unwrap();
    assert!(!summary.contains("(0 cached)"), "{summary}");
    p.exp_string("> ").unwrap();

    // A long reply interrupted by Ctrl-C: the program goes on.
    p.send_line("/reset").unwrap();
    p.exp_string("(conversation reset)").unwrap();
    p.exp_string("> ").unwrap();
    drop(p);

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bitnet"));
    cmd.args(["chat", "-n", "-1", "-c", "1024"]);
    let mut p = spawn_command(cmd, Some(30_000)).unwrap();
    p.exp_string("> ").unwrap();
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
