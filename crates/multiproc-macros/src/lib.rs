//! `#[multiproc::main]`: makes `multiproc::init()` the first statement of `main`, the
//! Rust form of Python's `if __name__ == "__main__":`. Written on `proc_macro` alone
//! (no syn): it finds the function's body and puts the call in front of it.
#![warn(missing_docs)]

use proc_macro::{Delimiter, Group, TokenStream, TokenTree};

/// Calls `multiproc::init()` before the body of the function it decorates.
///
/// ```ignore
/// #[multiproc::main]
/// fn main() -> anyhow::Result<()> {
///     // in a child process, init() ran the task and exited before this line
///     Ok(())
/// }
/// ```
#[proc_macro_attribute]
pub fn main(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return compile_error("#[multiproc::main] takes no arguments");
    }
    let mut tokens: Vec<TokenTree> = item.into_iter().collect();
    let is_fn = tokens
        .iter()
        .any(|t| matches!(t, TokenTree::Ident(i) if i.to_string() == "fn"));
    let body = tokens
        .iter()
        .rposition(|t| matches!(t, TokenTree::Group(g) if g.delimiter() == Delimiter::Brace));
    let (true, Some(idx)) = (is_fn, body) else {
        return compile_error("#[multiproc::main] goes on a function with a body");
    };
    let TokenTree::Group(g) = &tokens[idx] else {
        unreachable!("rposition matched a group")
    };
    let mut inner: TokenStream = "::multiproc::init();".parse().expect("a valid statement");
    inner.extend(g.stream());
    let mut new_group = Group::new(Delimiter::Brace, inner);
    new_group.set_span(g.span());
    tokens[idx] = TokenTree::Group(new_group);
    tokens.into_iter().collect()
}

fn compile_error(msg: &str) -> TokenStream {
    format!("compile_error!({msg:?});")
        .parse()
        .expect("a valid compile_error! invocation")
}
