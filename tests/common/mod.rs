pub mod postfix;
pub mod process;
pub mod relay;
