pub mod postfix;
pub mod relay;
