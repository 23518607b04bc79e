mod clients;
mod continuous;
mod crash;
mod ingest;
mod notify;
mod pgwire;
mod services;
mod slt;
