//! controller8 (under construction).
