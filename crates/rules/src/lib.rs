//! Jurisdiction rule packs and the deadline engine (being written).
