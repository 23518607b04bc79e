mod clients;
mod continuous;
mod crash;
mod ingest;
mod pgwire;
mod services;
mod slt;
