//! Printing a command's result: the API's JSON with `-o json`, else text for people.

use serde::Serialize;

use crate::args::OutputFormat;

/// Pretty JSON on stdout.
pub fn print_json<T: Serialize>(v: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("api values always serialise")
    );
}

/// Prints `value` as pretty JSON with `-o json`; else `human` prints it as text (which may be
/// nothing, when the text comes later or not at all).
pub fn emit<T: Serialize>(output: OutputFormat, value: &T, human: impl FnOnce(&T)) {
    if output == OutputFormat::Json {
        print_json(value);
    } else {
        human(value);
    }
}
