//! The seed programs ported one to one, and a tour: see `examples/`.
