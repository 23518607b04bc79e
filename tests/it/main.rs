mod clients;
mod crash;
mod ingest;
mod pgwire;
mod services;
mod slt;
