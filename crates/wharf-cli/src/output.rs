//! Printing a command's result: the API's reply as one JSON or YAML document with `-o json` /
//! `-o yaml`, names with `-q` / `-o name`, else text for people (`-o wide`: more columns).

use serde::Serialize;

use crate::args::OutputFormat;

/// Pretty JSON on stdout.
pub fn print_json<T: Serialize>(v: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("api values always serialise")
    );
}

/// YAML on stdout (the same document as JSON).
pub fn print_yaml<T: Serialize>(v: &T) {
    // Through JSON's value: the API types serialise the same way for both.
    let value = serde_json::to_value(v).expect("api values always serialise");
    print!(
        "{}",
        serde_saphyr::to_string(&value).expect("json values always serialise as yaml")
    );
}

/// Prints `value` as one document with `-o json` / `-o yaml`; else `human` prints it as text
/// (which may be nothing, when the text comes later or not at all).
pub fn emit<T: Serialize>(output: OutputFormat, value: &T, human: impl FnOnce(&T)) {
    match output {
        OutputFormat::Json => print_json(value),
        OutputFormat::Yaml => print_yaml(value),
        _ => human(value),
    }
}

/// How a listing prints: as a document, names only, or a table (`wide` or not).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listing {
    pub output: OutputFormat,
    pub quiet: bool,
}

impl Listing {
    /// Prints `items`: a document with `-o json|yaml`; `id` of each with `-q`; `kind/id`
    /// with `-o name`; else the table `table` makes (`true`: wide).
    pub fn print<T: Serialize>(
        self,
        kind: &str,
        items: &[T],
        id: impl Fn(&T) -> String,
        table: impl FnOnce(&[T], bool) -> String,
    ) {
        match self.output {
            OutputFormat::Json => print_json(&items),
            OutputFormat::Yaml => print_yaml(&items),
            _ if self.quiet => items.iter().for_each(|i| println!("{}", id(i))),
            OutputFormat::Name => items.iter().for_each(|i| println!("{kind}/{}", id(i))),
            OutputFormat::Wide => println!("{}", table(items, true)),
            OutputFormat::Table => println!("{}", table(items, false)),
        }
    }
}
