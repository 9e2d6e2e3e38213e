pub mod postfix;
pub mod relay;
pub mod upstream;
