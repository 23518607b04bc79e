mod clients;
mod continuous;
mod crash;
mod ingest;
mod pgwire;
mod services;
mod sinks;
mod slt;
