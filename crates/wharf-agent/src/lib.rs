//! The Wharf agent: makes its node match the instances assigned to it.
pub mod driver;
