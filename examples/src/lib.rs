//! Examples for the ferry SDK live in this package as `[[example]]` targets.
