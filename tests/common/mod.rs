pub mod admin;
pub mod faults;
pub mod postfix;
pub mod process;
pub mod relay;
pub mod sink;
pub mod upstream;
