mod services;
mod pgwire;
mod slt;
mod crash;
mod ingest;
