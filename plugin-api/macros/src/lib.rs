//! `#[monitor]`, re-exported as `vigil_plugin_api::monitor`: see that crate's documentation.
//!
//! The attribute reads the names of the methods an `impl Monitor for …` block defines and adds
//! the constant `IMPLEMENTED_HOOKS` (the events whose hooks it overrides) to the block, so that
//! the SDK can report, once when the host loads the monitor, a hook that is implemented but
//! not listed in `MonitorInfo::events` (and so never called). It uses no parser crate: the
//! method names are the identifiers after `fn` at the top level of the block.

use proc_macro::{Delimiter, Group, TokenStream, TokenTree};

/// Hook methods and the event each one handles.
const HOOKS: [(&str, &str); 7] = [
    ("on_fit_start", "FIT_START"),
    ("on_train_epoch_start", "TRAIN_EPOCH_START"),
    ("on_train_batch_end", "TRAIN_BATCH_END"),
    ("on_validation_batch_end", "VALIDATION_BATCH_END"),
    ("on_validation_end", "VALIDATION_END"),
    ("on_train_epoch_end", "TRAIN_EPOCH_END"),
    ("on_fit_end", "FIT_END"),
];

/// Put on `impl Monitor for YourMonitor { … }`. See `vigil_plugin_api::monitor`.
#[proc_macro_attribute]
pub fn monitor(attribute: TokenStream, item: TokenStream) -> TokenStream {
    if !attribute.is_empty() {
        return error("#[monitor] takes no arguments");
    }
    let mut tokens: Vec<TokenTree> = item.into_iter().collect();
    let is_impl = tokens
        .iter()
        .any(|token| matches!(token, TokenTree::Ident(ident) if ident.to_string() == "impl"));
    let body = match tokens.last() {
        Some(TokenTree::Group(group)) if is_impl && group.delimiter() == Delimiter::Brace => {
            group.clone()
        }
        _ => return error("#[monitor] goes on an `impl Monitor for YourType { … }` block"),
    };
    let mut implemented = Vec::new();
    let mut previous_was_fn = false;
    for token in body.stream() {
        if let TokenTree::Ident(ident) = &token {
            let name = ident.to_string();
            if previous_was_fn {
                if let Some((_, event)) = HOOKS.iter().find(|(hook, _)| *hook == name) {
                    implemented.push(format!("::vigil_plugin_api::EventKind::{event}"));
                }
            }
            previous_was_fn = name == "fn";
        } else {
            previous_was_fn = false;
        }
    }
    let constant: TokenStream = format!(
        "#[doc(hidden)] const IMPLEMENTED_HOOKS: ::core::option::Option<::vigil_plugin_api::EventSet> = \
         ::core::option::Option::Some(::vigil_plugin_api::EventSet::of(&[{}]));",
        implemented.join(", ")
    )
    .parse()
    .expect("the constant is valid Rust");
    let mut stream = body.stream();
    stream.extend(constant);
    let mut replaced = Group::new(Delimiter::Brace, stream);
    replaced.set_span(body.span());
    let last = tokens.len() - 1;
    tokens[last] = TokenTree::Group(replaced);
    tokens.into_iter().collect()
}

fn error(message: &str) -> TokenStream {
    format!("::core::compile_error!({message:?});")
        .parse()
        .expect("compile_error! is valid Rust")
}
