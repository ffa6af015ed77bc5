//! The AI gateway library.
