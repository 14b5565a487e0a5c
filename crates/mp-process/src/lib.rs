//! Process (in progress).
