//! log8 (under construction).
