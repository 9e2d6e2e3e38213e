pub mod faults;
pub mod graph;
pub mod postfix;
pub mod process;
pub mod relay;
pub mod upstream;
pub mod xoauth2;
